"""sRecycled Alpaca: the Stanford Alpaca rows, reflected by a teacher and selected per student."""

from __future__ import annotations

from .srecycled import SRECYCLED_CITATION, SRecycled

_ALPACA_CITATION = """\
@misc{alpaca,
  author       = {Rohan Taori and Ishaan Gulrajani and Tianyi Zhang and Yann Dubois and Xuechen Li and
                  Carlos Guestrin and Percy Liang and Tatsunori B. Hashimoto},
  title        = {Stanford Alpaca: An Instruction-following LLaMA model},
  year         = {2023},
  publisher    = {GitHub},
  howpublished = {\\url{https://github.com/tatsu-lab/stanford_alpaca}}
}
"""


class SRecycledAlpaca(SRecycled):
    """The 52,002 rows of tatsu-lab/alpaca (instruction, optional input, output)."""

    SOURCE = "alpaca"
    HOMEPAGE = "https://huggingface.co/datasets/tatsu-lab/alpaca"
    CITATION = SRECYCLED_CITATION + _ALPACA_CITATION
    DESCRIPTION = (
        "sRecycled Alpaca: each Stanford Alpaca row rewritten by a teacher into four variants, and per student "
        "the variant it learns most from, selected by IFD and reverse IFD. Alpaca's licence (CC BY-NC 4.0) "
        "carries over."
    )
