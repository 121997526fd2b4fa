"""The generic helpers of RandAR/utils: seeds, atomic writes, image grids."""
import os

import numpy as np
import pytest
from PIL import Image

from RandAR.utils.atomic import atomic_open, atomic_path, is_temporary, write_json
from RandAR.utils.images import cells_to_pixels, feather_weights, image_grid, image_row, labelled_row, paste_known
from RandAR.utils.seeding import Stream, seed_for, seeds_for

M64 = (1 << 64) - 1


def splitmix64_int(x: int) -> int:
    """splitmix64 on Python integers, written from its definition (an independent check of the tensor version)."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def seed_int(global_seed, stream, *keys):
    h = splitmix64_int((keys[0] ^ (global_seed << 32)) & M64)
    for k in keys[1:]:
        h = splitmix64_int(h ^ k)
    return splitmix64_int(h ^ stream) >> 1


@pytest.mark.parametrize("global_seed", [0, 1, 2**31 - 1])
def test_seeds_equal_the_integer_definition(global_seed):
    indices = [0, 1, 7, 123456, 2**32 - 1]
    for stream in Stream:
        assert seeds_for(global_seed, stream, indices) == [seed_int(global_seed, stream, i) for i in indices]
    assert seed_for(global_seed, Stream.TRAIN_STEP, 3, 99) == seed_int(global_seed, Stream.TRAIN_STEP, 3, 99)
    assert seeds_for(global_seed, Stream.ITEM, [5, 6], 2) == [seed_int(global_seed, Stream.ITEM, k, 2) for k in (5, 6)]


def test_seeds_differ_across_streams_and_keys_and_reject_bad_input():
    seeds = {seed_for(0, s, k, j) for s in Stream for k in range(4) for j in range(4)}
    assert len(seeds) == len(Stream) * 16
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="global seed"):
        seed_for(2**31, Stream.IMAGE, 0)
    with pytest.raises(ValueError, match="keys >= 0"):
        seed_for(0, Stream.IMAGE, -1)


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = str(tmp_path / "sub" / "a.json")
    write_json({"v": 1}, path)
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write('{"v": 2')  # half a file, then a crash
            raise RuntimeError("crash")
    assert open(path).read().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert os.listdir(tmp_path / "sub") == ["a.json"]


def test_atomic_path_keeps_the_extension_for_format_sniffing_writers(tmp_path):
    path = str(tmp_path / "img.png")
    with atomic_path(path) as tmp:
        assert tmp.endswith(".png") and is_temporary(os.path.basename(tmp))
        Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(tmp)  # PIL picks PNG from the name
        assert not os.path.exists(path)
    assert os.listdir(tmp_path) == ["img.png"]
    assert np.array_equal(np.asarray(Image.open(path)), np.full((2, 3, 3), 7, np.uint8))
    assert not is_temporary("img.png") and not is_temporary(".hidden")


def test_image_grid_places_each_image_row_by_row():
    images = np.stack([np.full((2, 3, 3), i + 1, np.uint8) for i in range(5)])
    grid = image_grid(images, pad=1, background=0)  # 5 images -> 3 columns, 2 rows
    assert grid.shape == (2 * 3 - 1, 3 * 4 - 1, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        assert (grid[r * 3:r * 3 + 2, c * 4:c * 4 + 3] == i + 1).all()
    assert (grid[2] == 0).all() and (grid[3:, 8:] == 0).all()  # the padding row, the missing sixth image
    assert image_grid(images, cols=5, pad=0).shape == (2, 15, 3)


def test_image_row_top_aligns_panels_of_different_sizes():
    row = image_row([np.full((2, 2, 3), 1, np.uint8), np.full((4, 1, 3), 2, np.uint8)], pad=1, background=0)
    assert row.shape == (6, 6, 3)
    assert (row[1:3, 1:3] == 1).all() and (row[3:5, 1:3] == 0).all() and (row[1:5, 4] == 2).all()


# ---------------------------------------------------------------- log lines survive a kill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ["train_c2i.py", "sample_c2i.py"] + sorted(
    os.path.join("tools", f) for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py"))
# prints two lines to stdout (a file), reports on the marker pipe that it has printed, then waits to be killed
PRINT_THEN_WAIT = """import os, sys
if sys.argv[1] == "line_buffered":
    from RandAR.utils.progress import line_buffered_output
    line_buffered_output()
print("step 1 | loss 4.1")
print("step 2 | loss 3.9")
os.write(int(sys.argv[2]), b"printed")
sys.stdin.read()
"""


def printed_before_sigkill(tmp_path, mode: str) -> str:
    """Start a process whose stdout is a file, SIGKILL it once it says (through a pipe) that it has printed,
    and return what the file holds."""
    import select
    import signal
    import subprocess
    import sys
    out = tmp_path / f"{mode}.log"
    marker_r, marker_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", PRINT_THEN_WAIT, mode, str(marker_w)], stdin=subprocess.PIPE,
                                stdout=f, stderr=subprocess.STDOUT, pass_fds=(marker_w,), cwd=ROOT,
                                env=dict(env, PYTHONPATH=ROOT))
    os.close(marker_w)
    try:
        ready, _, _ = select.select([marker_r], [], [], 60)
        assert ready and os.read(marker_r, 16) == b"printed", "the child did not report"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        os.close(marker_r)
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    return out.read_text()


def test_line_buffered_output_keeps_the_printed_lines_of_a_killed_process(tmp_path):
    assert printed_before_sigkill(tmp_path, "line_buffered") == "step 1 | loss 4.1\nstep 2 | loss 3.9\n"
    assert printed_before_sigkill(tmp_path, "default") == ""  # block-buffered: what the helper is for


@pytest.mark.parametrize("path", LAUNCHERS)
def test_every_launcher_makes_its_output_line_buffered_first(path):
    """The first statement of each launcher's main (after its docstring) is line_buffered_output()."""
    import ast
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    body = [n for n in main.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first = body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Call), path
    assert getattr(first.value.func, "id", None) == "line_buffered_output", path


def test_feather_weights_closed_form():
    """A mask of one pixel in the middle of a 21x21 image: the weight at chessboard distance d is min(d, w) / w:
    0 on the mask, 1 from w pixels on (far inside the known region), a monotone ramp between."""
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    yy, xx = np.mgrid[:21, :21]
    d = np.maximum(abs(yy - 10), abs(xx - 10))
    for width in (1, 3, 6):
        w = feather_weights(mask, width)
        np.testing.assert_allclose(w, np.minimum(d, width) / width)
        assert w[10, 10] == 0 and w[0, 0] == 1
        assert np.all(np.diff(w[10, 10:]) >= 0) and np.all(np.diff(w[10, :11]) <= 0)
    np.testing.assert_array_equal(feather_weights(mask, 0), (~mask).astype(float))  # hard edge
    with pytest.raises(ValueError, match="feather width"):
        feather_weights(mask, -1)


def test_paste_known_blends_the_original_in_off_the_mask():
    mask = cells_to_pixels(np.array([[True, False, False, False]]), 4)  # (4, 16): the first 4 columns generated
    original = np.full((4, 16, 3), 200, np.uint8)
    results = np.full((2, 4, 16, 3), 100, np.uint8)
    out = paste_known(results, original, mask, 4)
    assert out.shape == results.shape
    np.testing.assert_array_equal(out[:, 0, :, 0], [[100, 100, 100, 100, 125, 150, 175] + [200] * 9] * 2)


def test_labelled_row_enlarges_small_panels_and_captions_them():
    panels = [np.full((8, 8, 3), 50, np.uint8), np.full((16, 16, 3), 90, np.uint8)]
    row = labelled_row(panels, ["input", "two\nlines"], min_side=32, pad=4)
    head = 12 * 2 + 4
    assert row.shape == (head + 32 + 8, 4 + 16 + 4 + 32 + 4, 3)  # scale 2: the larger panel reaches 32
    assert (row[head + 4:head + 20, 4:20] == 50).all() and (row[head + 4:head + 36, 24:56] == 90).all()
    assert (row[:head] < 255).any()  # the captions are drawn
