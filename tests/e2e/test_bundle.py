"""`hipchat-appliance bundle build|verify` and `install.sh --bundle`: a real bundle, refused tampering, no network.

One full bundle of this checkout (its own version) is built once for the module by the real
build (pip, apt, Maven, npm, all reaching the registries), signed with a throwaway key that the
tests trust through ``--trusted-keys-dir``; the build time and the size are printed.

What the offline tests cover:

- ``test_bundle_alone_installs_with_no_network`` proves, inside a loopback-only network namespace
  (``tests/netns.py``; no route, no resolver, no registry), that the bundle alone is complete for a
  fresh host: apt resolves and would install every package the roles name from the bundle's flat
  repository with an *empty* dpkg status (apt's own simulation), pip resolves the project, its
  build backend and ansible-core from ``wheels/`` with ``--no-index`` while ignoring what is
  installed, npm packs Converse.js from the bundle's cache, and the jars are the ones the
  opensearch role would fetch with Maven.
- ``test_offline_reinstall_changes_nothing`` runs the real ``install.sh --bundle`` in that
  namespace, with the appliance's ports bridged in, against the running appliance: it verifies,
  unpacks and runs the whole installer offline; on an installed host it must change nothing (no
  Ansible change, no package, no process restarted) and must not need the network. The only
  setting changed for it: preflight's port check is off (``-e preflight_ports={}``), because in
  the namespace the bridges hold the appliance's ports and preflight rightly names them as
  foreign processes.
- ``test_a_fresh_host_installs_from_the_bundle_with_no_network`` does the documented air-gapped
  install on a fresh host (``tests/fresh_host.py``: this machine's Debian root with the appliance
  hidden and its packages purged, in its own mount, PID and loopback-only network namespaces),
  then checks the whole appliance is up and two users chat through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from tests.conftest import REPO_DIR, VENV_DIR, program_pid, recap_counts, run_appliance_cli, run_installer, supervisorctl

DEPLOY_LOCK = "/tmp/hipchat-deploy.lock"
OFFLINE_APT_SOURCE = "/etc/apt/sources.list.d/hipchat-offline.list"
OFFLINE_APT_CONFIG = "/etc/apt/hipchat-offline.conf"
INSTALLED_SOURCE_CHECKSUM = os.path.join(VENV_DIR, ".hipchat-source.sha256")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A full bundle of this checkout, with its throwaway keys and build figures."""
    from appliance.bundle.build import build_bundle, tree_version
    from appliance.bundle.manifest import generate_key_pair

    work = tmp_path_factory.mktemp("bundle")
    private, _ = generate_key_pair(str(work / "signing"), key_id="e2e-test")
    trusted = work / "trusted"
    trusted.mkdir()
    shutil.copy(str(work / "signing" / "e2e-test.pub"), trusted)
    generate_key_pair(str(work / "other"), key_id="e2e-other")
    version = tree_version(REPO_DIR)
    report = build_bundle(source_dir=REPO_DIR, version=version, signing_key=private, out_dir=str(work / "out"))
    print(f"\nbundle build: {report.seconds:.1f} s, {report.bytes / 2**20:.1f} MiB, {report.files} files; parts {json.dumps(report.parts)}")
    with tarfile.open(report.path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    return {"path": report.path, "version": version, "manifest": manifest, "trusted": str(trusted), "work": work,
            "other_key": str(work / "other" / "e2e-other.key"), "report": report}


def _copy_members(src: str, dest: str, *, skip: str | None = None, header: tuple[bytes, bytes] | None = None) -> None:
    """Write ``dest`` as ``src``'s tar without member ``skip``, or with another manifest.json/.sig."""
    import io

    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tout:
        for index, member in enumerate(tin):
            if member.name == skip:
                continue
            if header is not None and index < 2:
                content = header[index]
                member.size = len(content)
                tout.addfile(member, io.BytesIO(content))
            else:
                tout.addfile(member, tin.extractfile(member))


def _install_bundle(bundle: str, trusted: str, releases: str, *extra: str, run=subprocess.run) -> subprocess.CompletedProcess:
    return run(
        ["bash", os.path.join(REPO_DIR, "installer", "install.sh"), "--bundle", bundle, "--trusted-keys-dir", trusted, *extra],
        capture_output=True, text=True, timeout=1500,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "HIPCHAT_RELEASES_DIR": releases},
    )


def test_bundle_holds_everything_and_verifies(built):
    """The manifest names version, upgrades_from, key and migrations; every part is inside; `bundle verify` accepts it."""
    manifest, files = built["manifest"], built["manifest"]["files"]
    assert manifest["format"] == 1 and manifest["version"] == built["version"] and manifest["key_id"] == "e2e-test"
    assert manifest["upgrades_from"] == [f"<{built['version']}"]
    assert "hipchat_server/storage/migrations" in manifest["migrations"]
    assert f"wheels/hipchat_server-{built['version']}-py3-none-any.whl" in files
    assert any(p.startswith("wheels/ansible_core-") for p in files) and any(p.startswith("wheels/setuptools-") for p in files)
    assert "debs/Packages" in files and any(p.startswith("debs/mariadb-server_") for p in files)
    assert f"opensearch/lib/opensearch-{manifest['opensearch']['version']}.jar" in files
    assert any(p.startswith("webclient/npm-cache/") for p in files)
    assert "installer/install.sh" in files and "roles/common/tasks/offline.yml" in files
    assert not [p for p in files if "__pycache__" in p or p.endswith(".key")]
    done = run_appliance_cli("bundle", "verify", built["path"], "--trusted-keys-dir", built["trusted"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == built["version"]


@pytest.mark.parametrize("damage", ["one changed byte", "another key", "same key id, another key", "missing file"])
def test_damaged_bundles_are_refused_with_nothing_changed(built, tmp_path, damage):
    """Each damaged bundle is refused with its reason, by `bundle verify` and by install.sh --bundle, which unpacks nothing."""
    from appliance.bundle.manifest import generate_key_pair, manifest_bytes, sign

    bad = str(tmp_path / "bad.bundle")
    manifest = built["manifest"]
    if damage == "one changed byte":
        victim = next(p for p in sorted(manifest["files"]) if p.startswith("debs/") and p.endswith(".deb"))
        shutil.copyfile(built["path"], bad)
        with tarfile.open(bad) as tar:
            offset = tar.getmember(victim).offset_data + 100
        with open(bad, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x01]))
        reason = f"checksum mismatch: {victim}"
    elif damage == "another key":
        forged = {**manifest, "key_id": "e2e-other"}
        data = manifest_bytes(forged)
        _copy_members(built["path"], bad, header=(data, sign(data, built["other_key"])))
        reason = "unknown key"
    elif damage == "same key id, another key":
        key, _ = generate_key_pair(str(tmp_path / "impostor"), key_id="e2e-test")
        data = manifest_bytes(manifest)
        _copy_members(built["path"], bad, header=(data, sign(data, key)))
        reason = "bad signature"
    else:
        victim = "roles/common/tasks/offline.yml"
        _copy_members(built["path"], bad, skip=victim)
        reason = f"missing file: {victim}"

    done = run_appliance_cli("bundle", "verify", bad, "--trusted-keys-dir", built["trusted"])
    assert done.returncode == 1 and reason in " ".join(done.stderr.split()), done.stderr
    releases = tmp_path / "releases"
    done = _install_bundle(bad, built["trusted"], str(releases))
    assert done.returncode == 3, done.stdout + done.stderr
    assert reason in done.stderr and "nothing was changed" in done.stderr
    assert os.listdir(releases) == [] if releases.exists() else True


def test_bundle_alone_installs_with_no_network(built, tmp_path):
    """In a loopback-only namespace apt, pip and npm find everything a fresh host needs in the bundle alone."""
    from appliance.bundle.build import EXTRA_DEBS, _role_packages
    from appliance.bundle.manifest import unpack_bundle
    from tests.netns import loopback_only

    release = str(tmp_path / "release")
    unpack_bundle(built["path"], release, [built["trusted"]])
    packages = _role_packages(release)
    assert set(EXTRA_DEBS) <= set(packages) and "mariadb-server" in packages
    with loopback_only(ports=[]) as ns:
        assert ns.outside_problems() == []
        apt = ns.run(["bash", "-c", f"""set -e; w={tmp_path}/apt; mkdir -p $w/lists/partial $w/archives/partial; : > $w/status
            echo 'deb [trusted=yes] file:{release}/debs ./' > $w/sources.list
            O="-o Dir::State::status=$w/status -o Dir::Etc::SourceList=$w/sources.list -o Dir::Etc::SourceParts=-
               -o Dir::State::Lists=$w/lists -o Dir::Cache=$w -o Dir::Cache::archives=$w/archives -o Debug::NoLocking=1"
            apt-get $O -q update >/dev/null 2>&1
            apt-get $O --simulate --no-install-recommends install {' '.join(packages)}"""], timeout=300)
        assert apt.returncode == 0, apt.stdout[-2000:] + apt.stderr[-2000:]
        assert "Inst mariadb-server " in apt.stdout and "Inst openjdk-17-jdk-headless " in apt.stdout
        pip = ns.run([f"{VENV_DIR}/bin/pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--quiet",
                      "--find-links", f"{release}/wheels", release, "-r", f"{release}/installer/requirements.txt",
                      "--report", f"{tmp_path}/pip-report.json"], timeout=300)
        assert pip.returncode == 0, pip.stderr[-2000:]
        with open(f"{tmp_path}/pip-report.json") as f:
            resolved = {item["metadata"]["name"].lower() for item in json.load(f)["install"]}
        assert {"hipchat-server", "ansible-core", "twisted", "cryptography"} <= resolved
        webclient = built["manifest"]["webclient"]["version"]
        npm = ns.run(["bash", "-c", f"set -e; cp -r {release}/webclient/npm-cache {tmp_path}/npm; cd {tmp_path}; "
                      f"npm pack converse.js@{webclient} --prefer-offline --cache {tmp_path}/npm --silent"], timeout=300)
        assert npm.returncode == 0 and os.path.getsize(f"{tmp_path}/converse.js-{webclient}.tgz") > 1_000_000, npm.stderr
    version = built["manifest"]["opensearch"]["version"]
    # The installed lib/ also holds the launcher the role compiles on the host.
    installed = {os.path.basename(p) for p in glob.glob(f"/opt/hipchat/opensearch/{version}/lib/*.jar")} - {"hipchat-opensearch-launcher.jar"}
    bundled = {os.path.basename(p) for p in glob.glob(f"{release}/opensearch/lib/*.jar")}
    assert installed and bundled == installed


def _source_checksum(manifest: dict) -> str:
    """The chat_core role's checksum of the project source (roles/chat_core/tasks/install.yml), from the manifest."""
    roots = ("hipchat_server/", "appliance/")
    names = sorted(p for p in manifest["files"] if p.startswith(roots) or p in ("setup.cfg", "pyproject.toml", "README.md"))
    return hashlib.sha256("".join(f"{manifest['files'][p]['sha256']}  {p}\n" for p in names).encode()).hexdigest()


@pytest.mark.installer
def test_offline_reinstall_changes_nothing(built, tmp_path):
    """install.sh --bundle inside a loopback-only namespace re-runs the whole installer on this host: no change, no network."""
    from tests.netns import APPLIANCE_PORTS, host_port_open, loopback_only

    programs = [line.split()[0] for line in supervisorctl("status").stdout.splitlines() if "RUNNING" in line]
    with open(DEPLOY_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # apt reads the flat repository as its unprivileged _apt user: pytest's tmp_path (0700) would hide it.
        scratch = tempfile.mkdtemp(prefix="hipchat-bundle-test-", dir="/var/tmp")
        os.chmod(scratch, 0o755)
        releases = os.path.join(scratch, "releases")
        ports = [p for p in APPLIANCE_PORTS if host_port_open(p)]
        other_code = _installed_checksum() != _source_checksum(built["manifest"])
        try:
            with loopback_only(ports=ports) as ns:
                assert ns.outside_problems() == []
                offline = lambda: _install_bundle(  # noqa: E731
                    built["path"], built["trusted"], releases, "-e", '{"preflight_ports": {}}', run=lambda argv, **kw: ns.run(argv, **kw))
                if other_code:
                    # The installed code is not the bundle's (another test or engineer deployed, or the
                    # checkout changed since the build): a first offline run installs the bundle's.
                    first = offline()
                    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
                pids = {name: program_pid(name) for name in programs}
                packages = subprocess.run(["dpkg-query", "-W"], capture_output=True, text=True).stdout
                started = time.monotonic()
                done = offline()
                print(f"\noffline re-install: {time.monotonic() - started:.0f} s")
        finally:
            _forget_offline_source(releases)
            shutil.rmtree(scratch, ignore_errors=True)
            if other_code:
                run_installer("--tags", "chat_core")  # this checkout's code again
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"Verified: version {built['version']}" in output
    counts = recap_counts(done.stdout)
    changed = [line for line in done.stdout.splitlines() if line.startswith("changed:")]
    assert counts["failed"] == 0 and counts["changed"] == 0, f"changed on an installed host: {changed}\n{output[-3000:]}"
    assert f"Verified: version {built['version']}" in done.stderr
    assert {name: program_pid(name) for name in programs} == pids, "a process was restarted"
    assert subprocess.run(["dpkg-query", "-W"], capture_output=True, text=True).stdout == packages


def _installed_checksum() -> str:
    with open(INSTALLED_SOURCE_CHECKSUM) as f:
        return f.read().strip()


def _forget_offline_source(releases: str) -> None:
    """Remove the apt source the offline run wrote (its directory is this test's) and apt's index of it."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(OFFLINE_APT_CONFIG)  # only ever named by the offline play's APT_CONFIG
    if os.path.exists(OFFLINE_APT_SOURCE):
        with open(OFFLINE_APT_SOURCE) as f:
            ours = releases in f.read()
        if ours:
            os.remove(OFFLINE_APT_SOURCE)
            # apt names a list by its URI: '_' escaped as %5f, then '/' as '_'.
            for listed in glob.glob("/var/lib/apt/lists/" + releases.rstrip("/").replace("_", "%5f").replace("/", "_") + "_*"):
                os.remove(listed)


# Debian packages a standard Debian 12 install has already; every other package the bundle holds
# for the roles is purged from the fresh host first, so the install must bring it from the bundle.
STANDARD_DEBIAN = {"ca-certificates", "iproute2", "openssl", "procps", "python3"}

# Two users of the fresh appliance chat over a real XMPP client in its network namespace.
FRESH_CHAT = """
import asyncio, sys, types
from tests.e2e.xmpp_client import Endpoint, collect, run, send_durably, sm_login
domain, ca, alice, bob = sys.argv[1:5]
config = types.SimpleNamespace(server=types.SimpleNamespace(domain=domain), xmpp=types.SimpleNamespace(c2s_port=5222, c2s_tls_port=5223),
                               tls=types.SimpleNamespace(ca_certificate=ca))
async def chat():
    endpoint = Endpoint(config)
    sender, receiver = await sm_login(endpoint, alice), await sm_login(endpoint, bob)
    await send_durably(sender, f"{bob}@{domain}", "hello from an air-gapped appliance")
    print(await collect(receiver.received, 1))
    for client in (sender, receiver):
        await client.close()
run(chat())
"""


def test_a_fresh_host_installs_from_the_bundle_with_no_network(built, tmp_path):
    """The documented air-gapped install (extract the installer, `install.sh --bundle`) on a fresh Debian 12 root
    with no network: the appliance comes up whole, and two users chat through it."""
    from tests.fresh_host import fresh_host
    from tests.e2e.xmpp_client import PASSWORD

    purge = sorted(set(built["manifest"]["debs"]) - STANDARD_DEBIAN)
    made = time.monotonic()
    with fresh_host(purge) as host:
        print(f"\nfresh host made in {time.monotonic() - made:.0f} s (purged {len(purge)} packages and what only they needed)")
        assert host.network.outside_problems() == []
        assert host.run("test ! -e /opt/hipchat && ! id hipchat && ! command -v java && ! command -v mariadbd").returncode == 0
        bundle, trusted = host.carry_in(built["path"]), host.carry_in(built["trusted"])
        started = time.monotonic()
        done = host.run(
            f"mkdir air-gap && cd air-gap && tar -xf {bundle} installer appliance/bundle && "
            f"bash installer/install.sh --bundle {bundle} --trusted-keys-dir {trusted}",
            timeout=1800,
        )
        seconds = time.monotonic() - started
        output = done.stdout + done.stderr
        print(f"fresh install from the bundle: {seconds:.0f} s")
        assert done.returncode == 0, output[-5000:]
        assert f"Verified: version {built['version']}" in output
        assert recap_counts(done.stdout)["failed"] == 0

        status = host.run("/opt/hipchat/venv/bin/hipchat-appliance status --json", timeout=120)
        sections = json.loads(status.stdout)["sections"]
        assert status.returncode == 0 and all(s["healthy"] for s in sections.values()), status.stdout[-3000:]
        processes = sections["processes"]["details"]["processes"]
        assert len(processes) >= 20 and {p["state"] for p in processes} == {"RUNNING"}, processes
        assert sections["opensearch"]["details"]["cluster"]["status"] == "green"
        assert sections["mariadb"]["details"]["schema_revision"] == sections["mariadb"]["details"]["code_revision"]
        assert host.run("readlink /opt/hipchat/current").stdout.strip().endswith(f"/releases/{built['version']}")

        users = []
        for name in ("alice", "bob"):
            username = f"fresh-{name}"
            added = host.run(
                f"printf '%s\\n' '{PASSWORD}' > /root/password && /opt/hipchat/venv/bin/hipchat-appliance user add {username} "
                f"--name 'Fresh {name}' --email {username}@example.com --password-file /root/password"
            )
            assert added.returncode == 0, added.stdout + added.stderr
            users.append(username)
        domain = host.run("/opt/hipchat/venv/bin/python -c 'from hipchat_server.config import load_config; "
                          "print(load_config(\"/etc/hipchat/hipchat.yml\").server.domain)'").stdout.strip()
        ca = tmp_path / "fresh-ca.crt"
        ca.write_text(host.run("cat /etc/hipchat/tls/ca.crt").stdout)
        chatted = subprocess.run(
            host.network.command([f"{VENV_DIR}/bin/python", "-c", FRESH_CHAT, domain, str(ca), *users]),
            capture_output=True, text=True, timeout=180, cwd=REPO_DIR, env={**os.environ, "PYTHONPATH": REPO_DIR},
        )
        assert chatted.returncode == 0, chatted.stdout[-2000:] + chatted.stderr[-3000:]
        assert "hello from an air-gapped appliance" in chatted.stdout
        # ...and it went the durable way: spool, then the fresh cluster's message index.
        search = ("python3 -c 'import urllib.request; "
                  "print(urllib.request.urlopen(\"http://127.0.0.1:9200/messages/_count?q=body:air-gapped\").read().decode())'")
        deadline = time.monotonic() + 60
        while json.loads(host.run(search).stdout or "{}").get("count") != 1:
            assert time.monotonic() < deadline, host.run(search).stdout
            time.sleep(1)
