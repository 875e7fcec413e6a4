"""The card templates ship inside the package: a checkout and an installed wheel both render cards from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

from recycled_datasets.hub.cards import DATASET_TEMPLATE, MODEL_TEMPLATE, template_dir

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_of_the_tree_is_listed_for_the_wheel():
    # The packages are listed by hand (a mapped folder is invisible to packages.find): a new subpackage that is
    # not listed would be missing from every installed copy while all tests of a checkout still pass.
    table = _setuptools_table()
    mapped = table.get("package-dir", {})
    listed = set(table["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "recycled_datasets").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    for package, folder in mapped.items():
        on_disk |= {
            ".".join((package, *p.parent.relative_to(ROOT / folder).parts))
            for p in (ROOT / folder).rglob("__init__.py")
            if "__pycache__" not in p.parts
        }
    assert listed == on_disk
    assert mapped["recycled_datasets.model_cards"] == "model_cards"


def test_a_checkout_reads_its_own_template_folder():
    assert Path(str(template_dir())) == ROOT / "model_cards"
    assert not (ROOT / "recycled_datasets" / "hub" / "model_cards").exists()  # no link into the package


def test_an_installed_wheel_renders_both_cards_from_its_own_templates(tmp_path):
    # Build from a copy of what the wheel is made of, so the checkout gets no build/ or egg-info; then install
    # into a bare target folder.
    src = tmp_path / "src"
    for folder in ("recycled_datasets", *_setuptools_table().get("package-dir", {}).values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run = {"capture_output": True, "text": True, "timeout": 300}
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "whl", src], **run)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "whl").glob("recycled_datasets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in (DATASET_TEMPLATE, MODEL_TEMPLATE):
        assert f"recycled_datasets/model_cards/{template}" in names
    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], **run)
    assert installed.returncode == 0, installed.stderr

    code = textwrap.dedent(
        f"""
        from pathlib import Path

        from huggingface_hub import DatasetCard
        from hub_server import make_workdir

        import recycled_datasets
        from recycled_datasets.hub import write_release_tree
        from recycled_datasets.hub.cards import template_dir

        site = Path({str(site)!r})
        assert Path(recycled_datasets.__file__).is_relative_to(site), recycled_datasets.__file__
        assert Path(str(template_dir())) == site / "recycled_datasets" / "model_cards", template_dir()
        tree = write_release_tree(make_workdir(Path("work")), Path("out"), repo_id="org/srecycled")
        card = DatasetCard.load(tree.root / "README.md")
        print([c["config_name"] for c in card.data.configs if c.get("default")][0], card.data.pretty_name)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, **run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "llama2-7b sRecycled Alpaca: student-selected reflection-tuning data"
