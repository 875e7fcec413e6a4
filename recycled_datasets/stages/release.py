"""The release stage: the workdir's stage files -> DIR/dataset, the exact file layout of the Hub repo."""

from __future__ import annotations

from dataclasses import dataclass

from recycled_datasets.stages.base import ReleaseStageStats, Stage
from recycled_datasets.workdir import Workdir


@dataclass
class ReleaseStage(Stage):
    """DIR/dataset: one config per student built in the workdir, plus ``reflections`` and ``scores``.

    The tree is written beside the old one and swapped in, so DIR/dataset is never half written; it is
    rewritten on every build (it takes about a second, from files the other stages already made), so it
    always shows every student of the workdir.
    """

    name = "release"

    workdir: Workdir

    def done(self) -> bool:
        return False

    def _run(self) -> ReleaseStageStats:
        from recycled_datasets.hub import write_release_tree

        # A student left stale by this build (another student's re-judge changed the reflections) is left out
        # with a warning naming the command that rebuilds it; `srecycle push` refuses it.
        tree = write_release_tree(self.workdir.root, self.workdir.dataset, legacy=True, skip_stale=True)
        rows = sum(tree.rows.values())
        return ReleaseStageStats(self.name, rows=rows, made=rows, root=tree.root, configs=tree.configs)
