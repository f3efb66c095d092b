"""Suite-wide settings."""

import os

# llama.cpp's OpenMP threads spin while they wait for each other; on a busy
# 2-core CI machine that makes generation 10-20x slower. A short spin fixes it
# with no loss when idle. It must be set before libgomp loads, i.e. before any
# test module imports llama_cpp; the CLI sets the same for its own process.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
