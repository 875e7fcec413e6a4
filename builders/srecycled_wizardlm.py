"""sRecycled WizardLM: the WizardLM evol-instruct 70k rows, reflected by a teacher and selected per student."""

from __future__ import annotations

from .srecycled import SRECYCLED_CITATION, SRecycled

_WIZARDLM_CITATION = """\
@inproceedings{xu2024wizardlm,
  title     = {{WizardLM}: Empowering Large Language Models to Follow Complex Instructions},
  author    = {Xu, Can and Sun, Qingfeng and Zheng, Kai and Geng, Xiubo and Zhao, Pu and Feng, Jiazhan and
               Tao, Chongyang and Lin, Qingwei and Jiang, Daxin},
  booktitle = {The Twelfth International Conference on Learning Representations},
  year      = {2024}
}
"""


class SRecycledWizardLM(SRecycled):
    """The 70k rows of WizardLMTeam/WizardLM_evol_instruct_70k (instruction and output, no input)."""

    SOURCE = "wizardlm"
    HOMEPAGE = "https://huggingface.co/datasets/WizardLMTeam/WizardLM_evol_instruct_70k"
    CITATION = SRECYCLED_CITATION + _WIZARDLM_CITATION
    DESCRIPTION = (
        "sRecycled WizardLM: each WizardLM evol-instruct 70k row rewritten by a teacher into four variants, and "
        "per student the variant it learns most from, selected by IFD and reverse IFD."
    )
