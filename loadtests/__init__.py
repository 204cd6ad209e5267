"""roomcast load generation and the benchmark harness (`python -m loadtests.bench`)."""
