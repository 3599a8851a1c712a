"""The correctness oracle: Hugging Face transformers on the same checkpoint (DESIGN.md section 4).

Used by the tests, the benchmarks (as the baseline) and `internvl-serve oracle`.
"""

from internvl_serve.oracle.reference import Oracle, OracleInputs

__all__ = ["Oracle", "OracleInputs"]
