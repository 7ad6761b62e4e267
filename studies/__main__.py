import sys

from studies.interrupt_line import guard_start_up, ignore_from_now

guard_start_up()
from studies.cli import main  # noqa: E402  (after the guard: this import takes a second or more)

code = main()
ignore_from_now()
sys.exit(code)
