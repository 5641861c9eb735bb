"""Whether Triton runs interpreted on the CPU (TRITON_INTERPRET, read by triton when it is imported).

Asks Triton itself, so that every spelling it accepts ("1", "true", "on", "yes", any case) or refuses
("false", "off", "2", ...) means the same here as in its JIT.
"""

import triton


def triton_interpreter_on() -> bool:
    return bool(triton.knobs.runtime.interpret)
