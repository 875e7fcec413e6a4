"""The builders from an installed package: a fresh venv, ``pip install .`` (not editable), then the README's
builder example run from outside the repo gives the subset that ``srecycle build`` writes with the same options.

The fresh venv gets the test venv's installed dependencies through a ``.pth`` line (no download, no
reinstall); a ``.pth`` line adds a folder to ``sys.path`` without running that folder's own ``.pth`` files,
so the test venv's editable install of this checkout cannot leak in. Slow: the embedded teacher generates on
CPU, for the builder here and once for the CLI's shared build (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "smollm2-135m"
EXAMPLE_IMPORT = "from recycled_datasets.builders import SRecycledSample"
# What the example's run reports about itself, appended to the README's code.
REPORT = """
import json, sys
import recycled_datasets, recycled_datasets.builders
subset.to_parquet("subset.parquet")
where = {
    "package": recycled_datasets.__file__,
    "builders": recycled_datasets.builders.__file__,
    "editable": sorted(m for m in sys.modules if "__editable__" in m),
    "path": sys.path,
}
with open("where.json", "w") as f:
    json.dump(where, f)
"""

pytestmark = pytest.mark.slow


def readme_example() -> str:
    """The README's one python block that uses the builders."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if EXAMPLE_IMPORT in b]
    assert len(found) == 1, f"README.md should have one python block with {EXAMPLE_IMPORT!r}, found {len(found)}"
    return found[0]


def run(args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{args[:4]} failed ({done.returncode}):\n{output}"
    return done.stdout


def checkout_files() -> list[str]:
    """The files of this checkout that git would commit (tracked, or new and not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(venv, its python, an environment without this checkout on the path) with the project installed."""
    import shutil

    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv on this machine: {made.stderr.strip()[-500:]}")
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base, env=env, timeout=60
    ).strip()
    # This interpreter's package folders (and any a .pth of its own added, as a layered dev venv has).
    folders = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    deps = dict.fromkeys(folders + [p for p in sys.path if Path(p).name == "site-packages"])
    Path(purelib, "test-venv-dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    # Installed from a copy: building in the checkout would leave build/ and *.egg-info there.
    source = base / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", source],
        cwd=base,
        env=env,
        timeout=300,
    )
    return venv, python, env


def test_the_readme_builder_example_from_an_installed_package_gives_the_cli_subset(
    fresh_venv: tuple[Path, Path, dict[str, str]], tmp_path: Path, embedded_build: tuple[Path, str]
):
    venv, python, env = fresh_venv
    outside = tmp_path / "user"
    outside.mkdir()
    (outside / "example.py").write_text(readme_example() + REPORT)
    run([python, "example.py"], cwd=outside, env=env, timeout=900)

    where = json.loads((outside / "where.json").read_text())
    for module in ("package", "builders"):
        found = Path(where[module]).resolve()
        assert found.is_relative_to(venv.resolve()), f"{module} imported from {found}, not the fresh venv"
        assert not found.is_relative_to(ROOT)
    assert where["editable"] == []
    assert str(ROOT) not in where["path"]

    # the CLI's build with the example's options is the shared one (tests/conftest.py: EMBEDDED_BUILD_ARGS)
    assert "limit=3" in readme_example() and "max_new_tokens=48" in readme_example()
    cli, _ = embedded_build
    released = pq.read_table(cli / "dataset" / STUDENT / "train-00000-of-00001.parquet")
    built = pq.read_table(outside / "subset.parquet")
    assert built.num_rows > 0
    assert built.column_names == released.column_names
    assert built.to_pylist() == released.to_pylist()
