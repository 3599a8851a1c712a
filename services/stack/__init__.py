"""Running our services and their dependencies as local processes (internvl-serve up, benchmarks, tests)."""
