"""recycled-datasets: Selective Reflection-Tuning data, recycled by a teacher and selected per student.

The package is a row of stages, each in its own module: ``sources`` (read rows) -> ``teacher`` (reflect)
-> ``scoring`` (student perplexities) -> ``selection`` -> ``builders``/``hub`` (materialize, publish).
Heavy libraries (torch, transformers) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
