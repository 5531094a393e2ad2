"""The live server's pieces that need no server: URLs, trust at a glance, refusal reasons, config checks."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from spm_lib.config import load_config
from spm_lib.domain import links
from spm_lib.engine.trust import worst_by_owner
from spm_lib.errors import ConfigError
from spm_lib.live.request import LiveRequestError, parse_request
from spm_lib.live.serve import check_pools, notebook_of, refusal_reason, url_join, voila_config

SECRET = "pT4wZ9-qLs2Nd7KxVb3Rm8Jf5Hc1Gy6Ea0UoWi_"
OWNERS = pd.DataFrame({"owner_id": ["ex", "m1", "m2", "r1", "r2", "r3"],
                       "name": ["Exec", "Mia", "Max", "Rae", "Ron", "Ria"],
                       "level": ["executive", "manager", "manager", "rep", "rep", "rep"],
                       "manager_id": [None, "ex", "ex", "m1", "m1", "m2"]})


def _token(owner: str, days: float = 1, cadence: str = "monthly", as_of: date | None = None) -> str:
    return links.sign(SECRET, owner, cadence, as_of, datetime.now(UTC) + timedelta(days=days))


def test_url_join_keeps_one_slash_and_the_base() -> None:
    assert url_join("/") == "/"
    assert url_join("/", "voila/render/") == "/voila/render/"
    assert url_join("/spm/", "login") == "/spm/login"
    assert url_join("spm", "spm/static/(.*)") == "/spm/spm/static/(.*)"


def test_notebook_of_reads_level_and_cadence_from_a_template_name() -> None:
    assert notebook_of("/voila/render/rep_weekly.ipynb") == ("rep", "weekly")
    assert notebook_of("/base/voila/render/executive_annual.ipynb") == ("executive", "annual")
    assert notebook_of("/voila/render/../secret.ipynb") is None
    assert notebook_of("/voila/render/rep_daily.ipynb") is None


def test_worst_trust_per_owner() -> None:
    t = pd.DataFrame({"owner_id": ["a", "a", "a", "b", "b", "c"],
                      "status": ["pass", "warn", "fail", "pass", "warn", "not_available"]})
    assert worst_by_owner(t).to_dict() == {"a": "fail", "b": "warn", "c": "pass"}


def test_refusal_reason_says_why_without_quoting_the_token() -> None:
    good = _token("m1")
    assert refusal_reason(SECRET, "/x") == "this address carries no valid link"
    expired = refusal_reason(SECRET, f"/voila/render/a.ipynb?t={_token('m1', days=-1)}")
    assert expired.startswith("this link expired on")
    altered = refusal_reason(SECRET, f"/?t={good[:-2]}zz")
    assert altered.startswith("this link is not valid") and good[:20] not in altered
    assert "does not open that report" in refusal_reason(SECRET, f"/voila/render/rep_monthly.ipynb?t={good}")


def test_parse_request_opens_the_viewer_or_their_subtree_only() -> None:
    q = f"t={_token('m1')}"
    req = parse_request(q, OWNERS, secret=SECRET, level="manager", cadence="monthly")
    assert (req.viewer_id, req.owner_id, req.as_of) == ("m1", "m1", None)
    req = parse_request(q + "&owner=r2", OWNERS, secret=SECRET, level="rep", cadence="monthly")
    assert (req.viewer_id, req.owner_id) == ("m1", "r2")
    with pytest.raises(LiveRequestError, match="does not open that owner's report"):
        parse_request(q + "&owner=r3", OWNERS, secret=SECRET, level="rep", cadence="monthly")  # a peer's rep
    with pytest.raises(LiveRequestError, match="does not open that owner's report"):
        parse_request(q + "&owner=ex", OWNERS, secret=SECRET, level="executive", cadence="monthly")  # upwards
    with pytest.raises(LiveRequestError, match="shows manager reports"):
        parse_request(q + "&owner=r1", OWNERS, secret=SECRET, level="manager", cadence="monthly")
    with pytest.raises(LiveRequestError, match="no verified request"):
        parse_request("", OWNERS, secret=SECRET, level="manager", cadence="monthly")
    with pytest.raises(LiveRequestError, match="carries no link"):
        parse_request("owner=m1", OWNERS, secret=SECRET, level="manager", cadence="monthly")
    with pytest.raises(LiveRequestError, match="expired"):
        parse_request(f"t={_token('m1', days=-1)}", OWNERS, secret=SECRET, level="manager", cadence="monthly")
    with pytest.raises(LiveRequestError, match="not valid"):
        parse_request(f"t={_token('m1')}", OWNERS, secret="another-secret-0123456789", level="manager",
                      cadence="monthly")


def test_a_link_opens_its_own_cadence_and_as_of_only() -> None:
    pinned = f"t={_token('m1', as_of=date(2026, 9, 30))}"
    assert parse_request(pinned, OWNERS, secret=SECRET, level="manager", cadence="monthly").as_of == date(2026, 9, 30)
    assert parse_request(pinned + "&as_of=2026-09-30", OWNERS, secret=SECRET, level="manager",
                         cadence="monthly").as_of == date(2026, 9, 30)
    with pytest.raises(LiveRequestError, match="opens monthly reports, not quarterly ones"):
        parse_request(pinned, OWNERS, secret=SECRET, level="manager", cadence="quarterly")
    with pytest.raises(LiveRequestError, match="opens the run as of 2026-09-30, not the one as of 2026-08-31"):
        parse_request(pinned + "&as_of=2026-08-31", OWNERS, secret=SECRET, level="manager", cadence="monthly")
    latest = f"t={_token('m1')}"
    with pytest.raises(LiveRequestError, match="opens the latest run, not the one as of 2026-08-31"):
        parse_request(latest + "&as_of=2026-08-31", OWNERS, secret=SECRET, level="manager", cadence="monthly")
    with pytest.raises(LiveRequestError, match="is not a date"):
        parse_request(pinned + "&as_of=last-month", OWNERS, secret=SECRET, level="manager", cadence="monthly")


def test_a_report_address_takes_no_template_theme_or_repeated_parameter() -> None:
    q = f"t={_token('m1')}"
    for extra, words in (("&template=lab", "carries template"), ("&theme=dark", "carries theme"),
                         ("&voila-template=reveal&x=1", "carries voila-template, x"),
                         (f"&t={_token('ex')}", "repeats a parameter")):
        with pytest.raises(LiveRequestError, match=words):
            parse_request(q + extra, OWNERS, secret=SECRET, level="manager", cadence="monthly")


def test_a_revoked_link_is_refused_in_the_kernel_too() -> None:
    q = f"t={_token('m1')}"
    assert parse_request(q, OWNERS, secret=SECRET, level="manager", cadence="monthly", revoked=lambda c: False)
    with pytest.raises(LiveRequestError, match="revoked"):
        parse_request(q, OWNERS, secret=SECRET, level="manager", cadence="monthly",
                      revoked=lambda c: c.owner_id == "m1")


def test_pools_must_name_templates(small_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(small_project / "config", project / "config")
    shutil.copytree(small_project / "templates", project / "templates")
    (project / "config" / "local").mkdir(exist_ok=True)
    (project / "config" / "local" / "live.yml").write_text("pools:\n  rep_montly: 2\n")
    cfg = load_config(project)
    with pytest.raises(ConfigError, match=r"pools.rep_montly.*did you mean 'rep_monthly'"):
        check_pools(cfg, project / "templates")


def test_voila_config_preheats_culls_and_leaves_plotly_extension_out(small_project: Path) -> None:
    cfg = load_config(small_project)
    c = voila_config(cfg, small_project / "templates", host="127.0.0.2", port=9999, secret=SECRET)
    assert c.Voila.ip == "127.0.0.2" and c.Voila.port == 9999 and c.Voila.port_retries == 0
    assert c.VoilaConfiguration.preheat_kernel is True and c.VoilaConfiguration.show_tracebacks is False
    assert c.VoilaConfiguration.extension_denylist == ["jupyterlab-plotly"]
    assert c.VoilaKernelManager.kernel_pools_config["default"]["pool_size"] == cfg.live.pool_size
    assert c.MappingKernelManager.cull_idle_timeout == cfg.live.cull_idle_s == 600
    assert c.MappingKernelManager.cull_connected is True  # an idle open tab's kernel is culled too
    assert c.VoilaConfiguration.allow_template_override == "NO" == c.VoilaConfiguration.allow_theme_override
