"""Test-session settings: the fingerprint cache (RandAR.utils.run_stamp) goes to a temporary folder, not the
user's ~/.cache/randar; subprocesses inherit it through the environment."""
import atexit
import os
import shutil
import tempfile

os.environ["RANDAR_CACHE"] = tempfile.mkdtemp(prefix="randar-test-cache-")
atexit.register(shutil.rmtree, os.environ["RANDAR_CACHE"], True)
