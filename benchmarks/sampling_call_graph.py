"""How many project files a reader opens to follow one sample_c2i.py run (the tiny fixture model, 2 images):

    python benchmarks/sampling_call_graph.py

prints three figures: the project files on the call stack when the model's forward (decode step) first runs,
the project files whose functions run at all (sys.setprofile around sample_c2i.main; the module and
class bodies that imports run are not functions), and the tracked source
files outside benchmarks/ and tests/ that name `top_p` (where a decoding knob has to be spelt out).
"""
import inspect
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIX = os.path.join(ROOT, "tests", "fixtures")


def project_file(path: str):
    """The repository-relative path of a project source file, else None (libraries, the standard library)."""
    if path.startswith("<") or os.path.abspath(path) == os.path.abspath(__file__):
        return None
    path = os.path.abspath(path)
    if not path.startswith(ROOT + os.sep) or os.sep + ".venv" + os.sep in path:
        return None
    return os.path.relpath(path, ROOT)


def measure() -> dict:
    import importlib.util
    spec = importlib.util.spec_from_file_location("sample_c2i", os.path.join(ROOT, "sample_c2i.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model_file = os.path.join(ROOT, "RandAR", "model", "randar_gpt.py")
    ran, stack_at_forward = set(), None

    def profile(frame, event, arg):
        nonlocal stack_at_forward
        if event != "call":
            return
        name = project_file(frame.f_code.co_filename)
        if name is None or not frame.f_code.co_flags & inspect.CO_OPTIMIZED:  # module and class bodies
            return
        ran.add(name)
        if stack_at_forward is None and frame.f_code.co_filename == model_file and \
                frame.f_code.co_name in ("forward", "decode_step"):
            files, f = set(), frame
            while f is not None:  # up to sample_c2i's main
                p = project_file(f.f_code.co_filename)
                if p is not None:
                    files.add(p)
                f = None if f.f_code is script.main.__code__ else f.f_back
            stack_at_forward = sorted(files)

    with tempfile.TemporaryDirectory() as out:
        argv = ["--exp-name", "graph", "--config", os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml"),
                "--gpt-ckpt", os.path.join(FIX, "randar_tiny.safetensors"),
                "--vq-ckpt", os.path.join(FIX, "vq_tiny.safetensors"), "--sample-dir", out,
                "--num-fid-samples", "2", "--per-proc-batch-size", "2"]
        sys.setprofile(profile)
        try:
            script.main(argv)
        finally:
            sys.setprofile(None)
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    top_p = sorted(p for p in tracked if not p.startswith(("benchmarks/", "tests/"))
                   and "top_p" in open(os.path.join(ROOT, p)).read())
    return {"stack_at_forward": stack_at_forward, "files_run": sorted(ran), "files_naming_top_p": top_p}


def main():
    m = measure()
    for key, files in m.items():
        print(f"{key}: {len(files)}\n    " + "\n    ".join(files))


if __name__ == "__main__":
    main()
