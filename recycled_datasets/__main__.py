"""``python -m recycled_datasets`` is ``srecycle`` (handy under ``torchrun -m``)."""

from recycled_datasets.cli import main

main()
