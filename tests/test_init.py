"""`spm init`, the packaged templates, and every command run on a folder that lacks something: it says what is
missing and how to fix it, exit 2, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spm_lib.config import StagesConfig, load_config
from spm_lib.project import PACKAGED_EXAMPLES, PACKAGED_TEMPLATES, init_project, templates_dir
from tests.test_data_catalogue import OPPORTUNITIES, OWNERS
from tests.test_data_catalogue import spm as spm_text

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "crm"
# every command that reads the project, with the arguments it needs to get that far
COMMANDS = [["data", "check"], ["cube"], ["kpis"], ["trust"], ["run"], ["send", "--dry-run"], ["actions", "list"],
            ["actions", "export"], ["schedule", "--next"], ["link", "--owner", "CEO"], ["serve"]]


def spm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """(exit code, the output with its lines unwrapped) of `spm ARGS` run in this process."""
    code, text = spm_text(capsys, *args)
    return code, " ".join(text.split())


@pytest.fixture(autouse=True)
def _no_project_nor_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPM_PROJECT_DIR", raising=False)
    monkeypatch.delenv("SPM_LINK_SECRET", raising=False)


def test_the_packaged_templates_and_examples_are_the_repository_ones() -> None:
    assert sorted(p.name for p in PACKAGED_TEMPLATES.glob("*.ipynb")) == \
        sorted(p.name for p in (ROOT / "templates").glob("*.ipynb"))
    assert len(list(PACKAGED_TEMPLATES.glob("*.ipynb"))) == 13
    assert {p.name for p in PACKAGED_EXAMPLES.iterdir() if p.is_dir()} >= {"maven_crm", "salesforce", "starter"}


def test_the_default_stages_are_the_config_defaults() -> None:
    """config/stages.yml, the starter's stages.yml and StagesConfig() say the same (the contract's `Closed` too)."""
    import yaml

    for path in (ROOT / "config" / "stages.yml", PACKAGED_EXAMPLES / "starter" / "stages.yml"):
        assert StagesConfig.model_validate(yaml.safe_load(path.read_text())) == StagesConfig(), path
    assert StagesConfig().closed == ["Closed"]


def test_init_writes_a_project_that_data_check_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "acme"
    code, text = spm(capsys, "init", str(root))
    assert code == 0, text
    assert {p.name for p in (root / "config").iterdir()} == {"company.yml", "source.yml", "stages.yml"}
    assert (root / "state").is_dir() and (root / "runs").is_dir() and not (root / "templates").exists()
    assert "owners.csv" in (root / "data" / "crm" / "README.md").read_text()
    assert f"spm --project {root} data check" in text and str(PACKAGED_TEMPLATES) in text
    cfg = load_config(root)
    assert (cfg.source.kind, cfg.source.path) == ("folder", "data/crm")
    assert templates_dir(root) == PACKAGED_TEMPLATES
    # no data yet: data check names the file to put where, exit 2
    code, text = spm(capsys, "--project", str(root), "data", "check")
    assert code == 2 and "required table 'owners' not found (looked for 'owners.csv')" in text, text
    assert str(root / "data" / "crm") in text
    (root / "data" / "crm" / "owners.csv").write_text(OWNERS)
    (root / "data" / "crm" / "opportunities.csv").write_text(OPPORTUNITIES)
    code, text = spm(capsys, "--project", str(root), "data", "check")
    assert code == 0 and "OK: the data can be used" in text, text
    # a command that needs state/ makes it again
    shutil.rmtree(root / "state")
    code, text = spm(capsys, "--project", str(root), "actions", "list")
    assert code == 0 and "No action matches." in text, text


def test_init_refuses_an_existing_project_and_copies_templates_on_request(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "p"
    init_project(root)
    before = (root / "config" / "source.yml").read_text()
    code, text = spm(capsys, "init", str(root))
    assert code == 2 and "is a project; nothing was changed" in text and "--copy-templates" in text, text
    assert (root / "config" / "source.yml").read_text() == before
    code, text = spm(capsys, "init", str(root), "--copy-templates")
    assert code == 0 and templates_dir(root) == root / "templates", text
    assert (root / "templates" / "rep_monthly.ipynb").read_bytes() == (ROOT / "templates" / "rep_monthly.ipynb") \
        .read_bytes()
    code, text = spm(capsys, "init", str(root), "--copy-templates")
    assert code == 2 and "templates exists already; nothing was copied" in text, text


@pytest.mark.parametrize("example,files", [("maven_crm", ["sales_pipeline.csv", "sales_teams.csv", "products.csv",
                                                          "accounts.csv"]),
                                           ("salesforce", ["opportunities.csv", "users.csv"])])
def test_init_from_an_example_is_ready_for_its_export(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      example: str, files: list[str]) -> None:
    root = tmp_path / example
    code, text = spm(capsys, "init", str(root), "--example", example)
    assert code == 0, text
    assert load_config(root).company.currency == "USD"
    data = root / "data" / example
    assert (data / "README.md").read_text() == (ROOT / "config" / "examples" / example / "README.md").read_text()
    for name in files:
        shutil.copy(FIXTURES / example / name, data / name)
    code, text = spm(capsys, "--project", str(root), "data", "check")
    assert code == 0 and "OK: the data can be used" in text, text


def test_unknown_example(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, text = spm(capsys, "init", str(tmp_path / "x"), "--example", "hubspot")
    assert code == 2 and "maven_crm" in text and "salesforce" in text, text


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_on_a_folder_without_config(command: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, text = spm(capsys, "--project", str(tmp_path), *command)
    assert code == 2 and "no config/ folder" in text and f"spm init {tmp_path}" in text, text
    assert "Traceback" not in text


def test_a_command_outside_any_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Run in a folder that is no project: it does not fall back on another project (the package's own repo)."""
    monkeypatch.chdir(tmp_path)
    code, text = spm(capsys, "data", "check")
    assert code == 2 and f"No project found in {tmp_path}" in text and "spm init DIR" in text, text
    init_project(tmp_path / "mine")
    monkeypatch.chdir(tmp_path / "mine" / "data")  # a parent holding config/ is the project
    code, text = spm(capsys, "data", "check")
    assert code == 2 and str(tmp_path / "mine" / "data" / "crm") in text, text


def test_a_config_without_source_yml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "company.yml").write_text("currency: EUR\n")
    code, text = spm(capsys, "--project", str(tmp_path), "cube")
    assert code == 2 and "source.yml is missing" in text and "spm init" in text, text


def test_missing_data_folder_and_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_project(tmp_path)
    for command in (["cube"], ["run"], ["kpis"], ["trust"], ["link", "--owner", "CEO"], ["serve"]):
        shutil.rmtree(tmp_path / "data" / "crm", ignore_errors=True)
        code, text = spm(capsys, "--project", str(tmp_path), *command)
        assert code == 2 and "Traceback" not in text, (command, text)
        needs = "SPM_LINK_SECRET is not set" if command[0] in ("link", "serve") else "is not a folder ("
        assert needs in text, (command, text)
    (tmp_path / "data" / "crm").mkdir()
    (tmp_path / "data" / "crm" / "owners.csv").write_text(OWNERS)
    (tmp_path / "data" / "crm" / "opportunities.csv").write_text(OPPORTUNITIES)
    code, text = spm(capsys, "--project", str(tmp_path), "send", "--dry-run", "--as-of", "2026-02-28")
    assert code == 2 and "holds no rendered run" in text and "spm run" in text, text


def test_a_project_without_templates_renders_with_the_packaged_ones(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Map your CRM" folder: config/ and data only. `spm run` uses the templates shipped with spm_lib."""
    init_project(tmp_path, "maven_crm")
    for csv in (FIXTURES / "maven_crm").glob("*.csv"):
        shutil.copy(csv, tmp_path / "data" / "maven_crm" / csv.name)
    assert not (tmp_path / "templates").exists()
    code, text = spm(capsys, "--project", str(tmp_path), "run", "--as-of", "2017-12-31", "--owner", "CEO",
                     "--workers", "1")
    assert code == 0 and "1 of 1 owners have a report" in text, text
    assert (tmp_path / "runs" / "monthly" / "2017-12-31" / "executive" / "CEO.html").is_file()
