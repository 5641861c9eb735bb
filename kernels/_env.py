"""Whether Triton runs interpreted on the CPU (TRITON_INTERPRET=1, read by triton when it is imported)."""

import os


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
