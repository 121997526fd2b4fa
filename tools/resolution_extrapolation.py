"""Zero-shot resolution extrapolation to PNGs and an .npz; see RandAR/applications/extrapolation_sampling.py
(or --help) for the command line."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.applications.extrapolation_sampling import main  # noqa: E402

if __name__ == "__main__":
    main()
