"""run_llm.py with a failure on one rank only, as an out-of-memory error on one GPU would be:
rank $FAIL_RANK fails its load with a UserError (test_tensor_parallel.py)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models  # noqa: E402
import run_llm  # noqa: E402
from utils import UserError  # noqa: E402

load_model = models.load_model


def failing_load(*args, **kwargs):
    if os.environ["RANK"] == os.environ["FAIL_RANK"]:
        raise UserError("could not load its weights (injected)")
    return load_model(*args, **kwargs)


models.load_model = failing_load
run_llm.main(sys.argv[1:])
