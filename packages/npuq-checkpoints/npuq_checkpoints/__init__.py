"""The trained checkpoints of npuq, as data: ``*.safetensors`` files in this folder (``README.md`` here says
what each one holds and which command trained it).

npuq finds the folder without importing this module (``npuq._shipped.checkpoint_dir``); ``DIRECTORY`` is the
same path for anyone else who wants the files.
"""

from pathlib import Path

__version__ = "0.1.0"

DIRECTORY = Path(__file__).resolve().parent
