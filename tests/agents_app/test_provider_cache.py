"""The agent's provider cache and warm plan dirs: lock files, hashes, concurrent installs,
eviction, the manifest of init's output and the configuration's fingerprint (no server)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents_app.agent.providers import (
    LockedProvider,
    ProviderCache,
    ProviderUnavailable,
    h1_dir,
    h1_dir_checked,
    parse_lock_file,
)
from agents_app.agent.warmdirs import (
    WarmPlans,
    config_fingerprint,
    manifest_difference,
    manifest_of,
    providers_difference,
)

OS_ARCH = "linux_amd64"


def make_package(mirror: Path, type_: str = "demo", version: str = "1.0.0", body: bytes = b"#!/bin/sh\n") -> Path:
    """A packed mirror entry: terraform-provider-<type>_<version>_<os_arch>.zip."""
    folder = mirror / "registry.terraform.io" / "local" / type_
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"terraform-provider-{type_}_{version}_{OS_ARCH}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo(f"terraform-provider-{type_}_v{version}")
        info.external_attr = 0o755 << 16
        zf.writestr(info, body)
    return archive


def expected_h1(files: dict[str, bytes]) -> str:
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items()))
    return "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()


def lock_text(version: str, *hashes: str, type_: str = "demo") -> str:
    hash_lines = "".join(f'    "{h}",\n' for h in hashes)
    return (f'provider "registry.terraform.io/local/{type_}" {{\n  version     = "{version}"\n'
            f'  constraints = "{version}"\n  hashes = [\n{hash_lines}  ]\n}}\n')


def test_it_parses_a_lock_file_and_refuses_a_malformed_address():
    text = "# comment\n" + lock_text("1.0.0", "h1:abc=", "zh:00ff") + lock_text("2.1.0", type_="other")
    assert parse_lock_file(text) == [
        LockedProvider("registry.terraform.io/local/demo", "1.0.0", ("h1:abc=", "zh:00ff")),
        LockedProvider("registry.terraform.io/local/other", "2.1.0", ()),
    ]
    with pytest.raises(ValueError, match="host/namespace/type"):
        parse_lock_file('provider "registry.terraform.io/../../etc" {\n  version = "1.0.0"\n}\n')


def test_it_computes_terraforms_h1_hash_of_a_package(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"one")
    (tmp_path / "sub" / "b").write_bytes(b"two")
    assert h1_dir(tmp_path) == expected_h1({"a": b"one", "sub/b": b"two"})


def test_it_hashes_an_unchanged_package_once_and_sees_any_change_to_it(tmp_path, monkeypatch):
    """The warm plan dir's check before each plan: the provider's h1 is remembered while no
    file changes, and user code that rewrites a file, even with its size and mtime restored,
    is hashed again and caught."""
    from agents_app.agent import providers

    package = tmp_path / "pkg"
    package.mkdir()
    binary = package / "terraform-provider-demo_v1.0.0"
    binary.write_bytes(b"genuine!")
    hashed: list[Path] = []
    real = providers.h1_dir
    monkeypatch.setattr(providers, "h1_dir", lambda root: hashed.append(root) or real(root))
    genuine = expected_h1({binary.name: b"genuine!"})
    assert h1_dir_checked(package) == genuine
    assert h1_dir_checked(package) == genuine
    assert len(hashed) == 1, "an unchanged package was hashed again"
    before = binary.stat()
    time.sleep(0.05)  # past the file system's timestamp tick: as a later job's write would be
    binary.write_bytes(b"evil!!!!")  # same size
    os.utime(binary, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: only ctime tells
    assert h1_dir_checked(package) == expected_h1({binary.name: b"evil!!!!"}) != genuine
    assert len(hashed) == 2


def test_it_installs_once_for_concurrent_slots_and_hits_afterwards(tmp_path):
    archive = make_package(tmp_path / "upstream", body=b"x" * 3_000_000)
    h1 = expected_h1({"terraform-provider-demo_v1.0.0": b"x" * 3_000_000})
    zh = "zh:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    provider = parse_lock_file(lock_text("1.0.0", h1, zh))[0]
    cache = ProviderCache(tmp_path / "cache", [tmp_path / "upstream"], budget_bytes=10**9, os_arch=OS_ARCH)
    results: list[bool] = []
    errors: list[BaseException] = []
    go = threading.Barrier(3)

    def slot() -> None:
        go.wait()
        try:
            results.append(cache.ensure(provider))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=slot) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(results) == [False, True, True]  # one install (a miss), two waited and hit
    assert cache.stats() | {"size_bytes": 0} == {"size_bytes": 0, "entries": 1, "hits": 2, "misses": 1, "installs": 1}
    entry = cache.entry_path(provider)
    assert h1_dir(entry) == h1
    assert os.access(entry / "terraform-provider-demo_v1.0.0", os.X_OK)
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []  # nothing half-written left


def test_it_refuses_a_package_that_does_not_match_the_lock_file(tmp_path):
    make_package(tmp_path / "upstream", body=b"tampered")
    provider = parse_lock_file(lock_text("1.0.0", expected_h1({"terraform-provider-demo_v1.0.0": b"genuine"})))[0]
    cache = ProviderCache(tmp_path / "cache", [tmp_path / "upstream"], budget_bytes=10**9, os_arch=OS_ARCH)
    with pytest.raises(ProviderUnavailable, match="matches none of the lock file's hashes"):
        cache.ensure(provider)
    assert not cache.entry_path(provider).exists()
    assert cache.stats()["entries"] == 0


def test_it_evicts_least_recently_used_unleased_versions_past_the_budget(tmp_path):
    upstream = tmp_path / "upstream"
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        make_package(upstream, version=version, body=version.encode() * 100_000)
    cache = ProviderCache(tmp_path / "cache", [upstream], budget_bytes=1_100_000, os_arch=OS_ARCH)
    v1, v2, v3 = (LockedProvider("registry.terraform.io/local/demo", v, ()) for v in ("1.0.0", "2.0.0", "3.0.0"))
    cache.ensure(v1)
    with cache.lease([v1]):  # a running job uses v1: it stays although it is the oldest
        cache.ensure(v2)
        cache.ensure(v3)
        assert cache.entry_path(v1).exists() and not cache.entry_path(v2).exists()
        assert cache.entry_path(v3).exists()
    assert cache.stats()["entries"] == 2


def init_like(job_dir: Path, cache: Path) -> None:
    """What init leaves: a lock file, providers linked into the cache, a backend file."""
    package = cache / "registry.terraform.io/local/demo/1.0.0" / OS_ARCH
    package.mkdir(parents=True)
    (package / "terraform-provider-demo_v1.0.0").write_bytes(b"binary")
    (job_dir / ".terraform.lock.hcl").write_text(
        lock_text("1.0.0", expected_h1({"terraform-provider-demo_v1.0.0": b"binary"})))
    link = job_dir / ".terraform/providers/registry.terraform.io/local/demo/1.0.0" / OS_ARCH
    link.parent.mkdir(parents=True)
    link.symlink_to(package)
    (job_dir / ".terraform/terraform.tfstate").write_text("{}")


def test_it_finds_what_user_code_added_changed_or_removed_after_init(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    init_like(job, tmp_path / "cache")
    recorded = manifest_of(job)
    assert manifest_difference(recorded, manifest_of(job)) == ""

    (job / ".terraform/providers/evil").write_text("#!/bin/sh\n")
    assert manifest_difference(recorded, manifest_of(job)) == (
        ".terraform/providers/evil was not produced by init (added after it)")
    (job / ".terraform/providers/evil").unlink()
    (job / ".terraform/terraform.tfstate").write_text('{"changed": 1}')
    assert manifest_difference(recorded, manifest_of(job)) == ".terraform/terraform.tfstate changed after init"


def test_it_checks_linked_providers_against_the_lock_file_and_the_cache(tmp_path):
    job, cache = tmp_path / "job", tmp_path / "cache"
    job.mkdir()
    init_like(job, cache)
    locked = parse_lock_file((job / ".terraform.lock.hcl").read_text())
    assert providers_difference(job, locked, OS_ARCH, [cache]) == ""
    assert "links outside the agent's provider cache" in providers_difference(job, locked, OS_ARCH, [tmp_path / "x"])
    binary = cache / "registry.terraform.io/local/demo/1.0.0" / OS_ARCH / "terraform-provider-demo_v1.0.0"
    binary.write_bytes(b"replaced")
    assert "does not match the lock file's hashes" in providers_difference(job, locked, OS_ARCH, [cache])


MAIN_TF = """
terraform {
  required_providers {
    demo = { source = "local/demo", version = "1.0.0" }
  }
}
module "net" {
  source = "./modules/net"
}
"""


def test_it_fingerprints_lock_file_modules_backend_and_nested_local_modules(tmp_path):
    (tmp_path / "modules/net").mkdir(parents=True)
    (tmp_path / "main.tf").write_text(MAIN_TF)
    (tmp_path / "modules/net/main.tf").write_text('module "inner" {\n  source = "../inner_v1"\n}\n')
    base = config_fingerprint(tmp_path)

    (tmp_path / "resources.tf").write_text('resource "terraform_data" "x" {\n  input = "changed"\n}\n')
    assert config_fingerprint(tmp_path) == base  # ordinary code changes need no init

    (tmp_path / "modules/net/main.tf").write_text('module "inner" {\n  source = "../inner_v2"\n}\n')
    changed = config_fingerprint(tmp_path)
    assert [k for k in base if base[k] != changed[k]] == ["modules"]

    (tmp_path / ".terraform.lock.hcl").write_text(lock_text("1.0.0"))
    (tmp_path / "backend.tf").write_text('terraform {\n  backend "http" {}\n}\n')
    again = config_fingerprint(tmp_path)
    assert {k for k in base if changed[k] != again[k]} == {"lock", "backend"}

    (tmp_path / "broken.tf").write_text("resource {{{")
    with pytest.raises(ValueError, match="broken.tf"):
        config_fingerprint(tmp_path)


def test_it_keeps_a_warm_tree_per_workspace_and_sends_a_planted_file_cold(tmp_path):
    cache_root = tmp_path / "cache"
    plans = WarmPlans(tmp_path / "store", budget=2, cache=None, upstream=[cache_root])
    job = tmp_path / "job1"
    job.mkdir()
    (job / "main.tf").write_text('resource "terraform_data" "x" {}\n')
    init_like(job, cache_root)
    plans._record(job, config_fingerprint(job), manifest_of(job))
    assert plans.finished(job, 7, keep=True)
    assert plans.workspaces() == [7] and not (job / ".terraform").exists()

    def fresh(name: str) -> SimpleNamespace:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "main.tf").write_text('resource "terraform_data" "x" {}\n')
        (directory / ".terraform.lock.hcl").write_text((tmp_path / "store/7/.terraform.lock.hcl").read_text())
        return SimpleNamespace(dir=directory)

    other = fresh("job-other-workspace")
    assert plans._reuse(other, 8, config_fingerprint(other.dir), "") == "no warm plan dir of this workspace on this agent"

    reused = fresh("job2")
    assert plans._reuse(reused, 7, config_fingerprint(reused.dir), "") == ""
    assert (reused.dir / ".terraform/terraform.tfstate").exists()

    (reused.dir / ".terraform/planted").write_text("#!/bin/sh\n")  # user code of the plan/apply
    assert plans.finished(reused.dir, 7, keep=True)
    cold = fresh("job3")
    assert plans._reuse(cold, 7, config_fingerprint(cold.dir), "") == (
        "the warm plan dir is not as init left it: .terraform/planted was not produced by init (added after it)")
    assert plans.workspaces() == [] and not (cold.dir / ".terraform").exists()


def test_it_forgets_every_warm_tree_when_the_agent_becomes_a_new_agent(tmp_path):
    """Workspace ids are only unique on one server: a fresh registration (another server, a
    lost identity) must not find another platform's workspace 7 warm."""
    plans = WarmPlans(tmp_path / "store", budget=2, cache=None, upstream=[tmp_path / "cache"])
    job = tmp_path / "job"
    job.mkdir()
    init_like(job, tmp_path / "cache")
    plans._record(job, config_fingerprint(job), manifest_of(job))
    assert plans.finished(job, 7, keep=True)
    assert WarmPlans(tmp_path / "store", budget=2, cache=None).workspaces() == [7]  # found again after a restart

    plans.clear()
    assert plans.workspaces() == [] and sorted(p.name for p in (tmp_path / "store").iterdir()) == []


def test_it_writes_its_own_cli_configuration_only_with_an_upstream(tmp_path, monkeypatch):
    from agents_app.agent.__main__ import warm_plans_from_environment

    mirror = tmp_path / "operator-mirror"
    mirror.mkdir()
    operator_config = tmp_path / "operator.tfrc"
    operator_config.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(operator_config))
    monkeypatch.delenv("IAC_AGENT_PROVIDER_UPSTREAM", raising=False)
    plain = warm_plans_from_environment(tmp_path / "agent1")
    assert plain.cache is None and plain.upstream == [mirror] and plain.budget == 20
    assert os.environ["TF_CLI_CONFIG_FILE"] == str(operator_config)

    monkeypatch.setenv("IAC_AGENT_PROVIDER_UPSTREAM", str(tmp_path / "upstream"))
    cached = warm_plans_from_environment(tmp_path / "agent2")
    config = Path(os.environ["TF_CLI_CONFIG_FILE"])
    assert cached.cache is not None and config == (tmp_path / "agent2" / ".providers.tfrc").absolute()
    assert config.read_text().index(str(cached.cache.root)) < config.read_text().index(str(tmp_path / "upstream"))


def test_it_drops_a_cli_configuration_that_names_no_file(tmp_path, monkeypatch):
    # Else terraform prints "Unable to open CLI configuration file" into every job's log.
    from agents_app.agent.__main__ import warm_plans_from_environment

    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(tmp_path / "missing.tfrc"))
    monkeypatch.delenv("IAC_AGENT_PROVIDER_UPSTREAM", raising=False)
    warm_plans_from_environment(tmp_path / "agent")
    assert "TF_CLI_CONFIG_FILE" not in os.environ
