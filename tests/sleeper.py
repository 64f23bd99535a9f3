"""A stand-in child process for tests: ignores its arguments and sleeps (until killed)."""

import time


if __name__ == "__main__":
    time.sleep(120)
