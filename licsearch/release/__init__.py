"""Release checks: the parity gate and the benchmarks that decide whether a model plane may ship."""
