"""The files that ship beside the code: LICENSE, CITATION.cff, py.typed, docs/models.md (up to date)."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import bicsnet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

#: MD5 of apache.org's LICENSE-2.0.txt, the canonical text (license scanners such as Yocto's key on it).
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_is_the_full_apache_2_text_with_our_copyright() -> None:
    first, body = (ROOT / "LICENSE").read_text(encoding="utf-8").split("\n", 1)
    assert first == "Copyright 2026 The bicsnet authors"
    assert hashlib.md5(body.encode("utf-8")).hexdigest() == APACHE_2_MD5
    assert PYPROJECT["license"] == {"text": "Apache-2.0"}


def test_citation_cff_cites_the_paper() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert {"message", "title", "authors"} <= set(cff)  # required by CFF 1.2.0
    assert cff["title"] == "bicsnet" and cff["version"] == PYPROJECT["version"] == bicsnet.__version__
    assert cff["license"] == PYPROJECT["license"]["text"]
    paper = cff["preferred-citation"]
    assert paper["type"] == "article"
    assert paper["title"] == "BiCSNet: A Bidirectional Cross-Scale Backbone for Recognition and Localization"
    assert [(a["given-names"], a["family-names"]) for a in paper["authors"]] == [
        ("Song", "Peng"), ("Zhenfeng", "Shao"), ("Xiao", "Huang"), ("Yi", "Zhu"), ("Ruiqian", "Zhang"), ("Junwei", "Zha"),
    ]  # fmt: skip
    assert paper["journal"] == "IEEE Transactions on Circuits and Systems for Video Technology"
    assert paper["year"] == 2022 and paper["doi"] == "10.1109/TCSVT.2021.3138743"
    assert not {"volume", "issue", "start", "end"} & set(paper)  # not printed in the paper's text: not guessed


def test_py_typed_ships_with_the_package() -> None:
    assert (Path(bicsnet.__file__).parent / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["bicsnet"]


def test_readme_links_the_project_files() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in ("docs/models.md", "LICENSE", "CITATION.cff"):
        assert f"]({target})" in readme, target


# ------------------------------------------------------------------ docs/models.md


@pytest.fixture(scope="module")
def models_md():  # the generator script, imported as a module
    spec = importlib.util.spec_from_file_location("models_md", ROOT / "scripts" / "models_md.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["models_md"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("models_md", None)


@pytest.fixture(scope="module")
def page() -> str:
    return (ROOT / "docs" / "models.md").read_text(encoding="utf-8")


def test_models_md_lists_every_registered_model_in_order(models_md, page: str) -> None:
    headings = [line[4:-1] for line in page.splitlines() if line.startswith("## `")]
    assert headings == bicsnet.list_models(), "docs/models.md is out of date: run scripts/models_md.py"


def test_models_md_registry_text_is_current(models_md, page: str) -> None:
    # Everything that needs no counting is regenerated and compared exactly.
    assert page.startswith(models_md.header()), "header out of date: run scripts/models_md.py"
    for name in bicsnet.list_models():
        assert models_md.describe(name) in page, f"{name}: registry text out of date: run scripts/models_md.py"
        if models_md.note(name):
            assert f"- {models_md.note(name)}\n" in page, f"{name}: note out of date: run scripts/models_md.py"


@pytest.mark.parametrize("name, task", [("resnet34", "classification"), ("bicsnet_lite0", "backbone")])
def test_models_md_counts_are_current(models_md, page: str, name: str, task: str) -> None:
    # Counting all ~90 model x task pairs takes minutes; two cheap ones show the numbers are this code's.
    row = models_md.count(name, task, *models_md.task_setting(name, task))
    assert models_md.table_line(row) in page.split(f"## `{name}`", 1)[1], f"{name}/{task}: counts out of date"
