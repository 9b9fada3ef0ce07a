"""The deployment files: Dockerfile, .dockerignore and the Kubernetes kustomizations.

No cluster and no Docker engine here, so the rules are checked on the files
themselves (parsed with PyYAML), and the gateway config is checked the way
the pod sees it: `gateway check` runs on the ConfigMap and Secret files laid
out at their mount paths under a temp root, with the kubelet's `..data`
symlinks, using the EXAMPLE key.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from gateway.config import load_config, parse_listen
from gateway.sealing import Keyring, load_public_key, write_keypair
from gateway.secrets import config_secret_refs
from tests.support import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
EXAMPLE_KEYS = K8S / "example-keys"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEALTHCHECK_SRC = DEPLOY / "docker" / "healthcheck.py"
KUSTOMIZATIONS = {"sidecar": K8S, "standalone": K8S / "standalone"}
GATEWAY_IMAGE = "gateway"  # the image name the manifests use; kustomize `images:` sets it
DEFAULT_SHUTDOWN_GRACE = 30.0  # `gateway serve --shutdown-grace` default
EXAMPLE_PLAINTEXTS = {"example-upstream-key", "example-client-key", "example-admin-token"}
RUN_TIMEOUT = 60


# --------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages, continuation lines joined, comments dropped, ARGs expanded."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif op == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{op} before the first FROM"
            stages[-1].instructions.append((op, rest))
    return stages


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list), f"not exec (JSON) form: {arg}"
    return value


def final_stage_env(stage: Stage) -> dict[str, str]:
    env = {}
    for arg in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", arg):
            env[key] = value
    return env


def test_dockerfile_is_multi_stage_slim_and_the_final_stage_copies_only_the_build():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name, "the build stage needs a name for COPY --from"
    for stage in stages:
        assert "slim" in stage.base, f"not a slim base: {stage.base}"
    assert build.base == final.base, "runtime and build stage must share the Python"
    copies = final.all("COPY")
    assert any(c.startswith(f"--from={build.name} ") for c in copies)
    # The runtime stage gets no source tree: only the virtualenv and data files.
    assert not any(c.split()[0] in ("gateway", ".") for c in copies)


def test_no_compiler_or_package_install_in_the_image():
    compilers = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cargo|rustc)\b")
    for stage in dockerfile_stages():
        for run in stage.all("RUN"):
            assert not compilers.search(run), run
            assert "apt-get install" not in run and "apk add" not in run, run


def test_dockerfile_user_is_non_root_and_numeric():
    final = dockerfile_stages()[-1]
    users = final.all("USER")
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric: Kubernetes' runAsNonRoot cannot check a user name.
    assert uid.isdigit() and int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_dockerfile_entrypoint_healthcheck_and_layout():
    stages = dockerfile_stages()
    final = stages[-1]
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["gateway", "serve"]
    env = final_stage_env(final)
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root filesystem
    assert "/opt/gateway/bin" in env["PATH"].split(":")
    mkdirs = " ".join(final.all("RUN"))
    assert "/etc/gateway/providers.d" in mkdirs and "/etc/gateway/keys" in mkdirs
    assert "deploy/docker/gateway.yaml /etc/gateway/gateway.yaml" in final.all("COPY")

    (healthcheck,) = final.all("HEALTHCHECK")
    assert "--interval=" in healthcheck
    cmd = exec_form(healthcheck.split(" CMD ", 1)[1])
    assert cmd == ["python", healthcheck_path(), "/healthz"]


def healthcheck_path() -> str:
    """Where the image holds the probe script: the COPY of deploy/docker/healthcheck.py."""
    dests = [
        c.split()[-1]
        for stage in dockerfile_stages()
        for c in stage.all("COPY")
        if c.split()[0] == "deploy/docker/healthcheck.py"
    ]
    assert len(dests) == 1
    # It is copied in the build stage, into the virtualenv the final stage copies whole.
    final_copies = dockerfile_stages()[-1].all("COPY")
    assert any(
        c.startswith("--from=") and dests[0].startswith(c.split()[-1] + "/") for c in final_copies
    )
    return dests[0]


def test_copied_files_exist_and_the_context_allows_them():
    for stage in dockerfile_stages():
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            for src in copy.split()[:-1]:
                assert (REPO / src).exists(), src
                assert not dockerignored(src), f"{src} is excluded by .dockerignore"
                if (REPO / src).is_dir():
                    for f in (REPO / src).rglob("*.py"):
                        if "__pycache__" not in f.parts:
                            assert not dockerignored(str(f.relative_to(REPO))), f


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _pattern_regex(line.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("gateway/cli.py", False),
        ("deploy/docker/healthcheck.py", False),
        ("deploy/kubernetes/example-keys/seal.key", True),
        ("deploy/docker/seal.key", True),
        ("gateway/seal.key", True),
        ("keys/seal.key", True),
        ("config/gateway.yaml", True),
        ("tests/support.py", True),
        (".git/HEAD", True),
        ("gateway/__pycache__/cli.cpython-311.pyc", True),
        (".venv/bin/python", True),
    ],
)
def test_dockerignore_lets_in_only_what_the_image_needs(path, ignored):
    assert dockerignored(path) is ignored


def test_the_image_placeholder_config_passes_check_in_the_image_layout(tmp_path):
    etc = tmp_path / "etc" / "gateway"
    (etc / "providers.d").mkdir(parents=True)
    (etc / "keys").mkdir()
    shutil.copy(DEPLOY / "docker" / "gateway.yaml", etc / "gateway.yaml")
    code, out = gateway_check(etc / "gateway.yaml", {})
    assert code == 0, out
    assert "OK (0 providers" in out


# --------------------------------------------------------------------------
# Kustomize: what a kustomization makes, read without kustomize


@dataclass
class Kustomization:
    root: Path
    objects: list[dict] = field(default_factory=list)
    # (kind, name) -> {key: source file}, from configMapGenerator/secretGenerator
    generated: dict[tuple[str, str], dict[str, Path]] = field(default_factory=dict)
    images: dict[str, dict] = field(default_factory=dict)
    referenced: list[Path] = field(default_factory=list)  # every path it names


def yaml_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path}: a document is not a mapping"
    return docs


def load_kustomization(root: Path, kind: str = "Kustomization") -> Kustomization:
    (data,) = yaml_docs(root / "kustomization.yaml")
    assert data.get("kind") == kind, f"{root}: expected kind {kind}"
    k = Kustomization(root)
    for res in data.get("resources", []):
        path = root / res
        k.referenced.append(path)
        assert path.exists(), f"{root}/kustomization.yaml: resource {res} does not exist"
        if path.is_dir():
            merge(k, load_kustomization(path))
        else:
            k.objects.extend(yaml_docs(path))
    for comp in data.get("components", []):
        path = root / comp
        k.referenced.append(path)
        assert (path / "kustomization.yaml").is_file(), f"{root}: component {comp} missing"
        merge(k, load_kustomization(path, kind="Component"))
    for gen_key, gen_kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for gen in data.get(gen_key, []):
            files = {}
            for entry in gen.get("files", []):
                key, _, rel = entry.rpartition("=")
                path = root / rel
                k.referenced.append(path)
                assert path.is_file(), f"{root}/kustomization.yaml: {gen_key} file {rel} missing"
                # kustomize refuses generator files outside the kustomization's root.
                assert path.resolve().is_relative_to(root.resolve()), rel
                files[key or path.name] = path
            k.generated[(gen_kind, gen["name"])] = files
    for image in data.get("images", []):
        k.images[image["name"]] = image
    return k


def merge(into: Kustomization, other: Kustomization) -> None:
    into.objects.extend(other.objects)
    into.generated.update(other.generated)
    into.images.update(other.images)
    into.referenced.extend(other.referenced)


@pytest.fixture(params=sorted(KUSTOMIZATIONS), scope="module")
def kust(request) -> Kustomization:
    return load_kustomization(KUSTOMIZATIONS[request.param])


def test_every_yaml_file_under_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10
    for path in files:
        assert yaml_docs(path), f"{path} is empty"


def test_kustomizations_list_existing_files_and_every_manifest_beside_them(kust):
    assert kust.referenced
    listed = {p.resolve() for p in kust.referenced}
    for path in kust.root.glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        docs = yaml_docs(path)
        if any("apiVersion" in d and "kind" in d for d in docs):
            assert path.resolve() in listed, f"{path} is not listed in resources"


def test_every_provider_fragment_is_in_the_providers_configmap(kust):
    (providers,) = [files for (kind, name), files in kust.generated.items() if "providers" in name]
    on_disk = {p.name for p in (kust.root / "config" / "providers.d").glob("*.y*ml")}
    assert on_disk, "no provider fragments"
    assert set(providers) == on_disk, "kustomization.yaml and config/providers.d disagree"


def test_the_gateway_image_is_set_by_the_kustomization(kust):
    assert GATEWAY_IMAGE in kust.images
    assert kust.images[GATEWAY_IMAGE].get("newName")


@dataclass
class Pod:
    kust: Kustomization
    deployment: dict

    @property
    def spec(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    def containers(self) -> list[dict]:
        return self.spec.get("initContainers", []) + self.spec["containers"]

    def gateway(self) -> dict:
        (gw,) = [c for c in self.containers() if c["image"] == GATEWAY_IMAGE]
        return gw

    def volume_files(self, volume_name: str) -> dict[str, Path]:
        (vol,) = [v for v in self.spec["volumes"] if v["name"] == volume_name]
        if "configMap" in vol:
            return self.kust.generated[("ConfigMap", vol["configMap"]["name"])]
        return self.kust.generated[("Secret", vol["secret"]["secretName"])]

    def mounts(self, container: dict) -> dict[str, dict[str, Path]]:
        """mount path -> {file name: source in git}, as the container sees it."""
        return {
            m["mountPath"]: self.volume_files(m["name"]) for m in container.get("volumeMounts", [])
        }

    def config_path(self) -> str:
        """The gateway's config file inside the container: --config, or the image's default."""
        return (
            flag(self.gateway(), "--config")
            or final_stage_env(dockerfile_stages()[-1])["GATEWAY_CONFIG"]
        )

    def config_source(self) -> Path:
        directory, _, name = self.config_path().rpartition("/")
        return self.mounts(self.gateway())[directory][name]

    def listen(self) -> str:
        """Where the gateway listens: --listen, else GATEWAY_LISTEN, else the config's `listen`."""
        gw = self.gateway()
        env = {e["name"]: e.get("value") for e in gw.get("env", [])}
        return (
            flag(gw, "--listen")
            or env.get("GATEWAY_LISTEN")
            or yaml.safe_load(self.config_source().read_text()).get("listen")
            or "127.0.0.1:8080"
        )


def flag(container: dict, name: str) -> str | None:
    args = [str(a) for a in container.get("command", []) + container.get("args", [])]
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def pods(kust: Kustomization) -> list[Pod]:
    found = [Pod(kust, d) for d in kust.objects if d["kind"] == "Deployment"]
    assert found, f"{kust.root}: no Deployment"
    return found


def is_loopback(listen: str) -> bool:
    host, _ = parse_listen(listen)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def test_pods_are_locked_down(kust):
    for pod in pods(kust):
        spec = pod.spec
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert sc.get("runAsUser", 0) > 0
        assert spec.get("automountServiceAccountToken") is False
        for c in pod.containers():
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, c["name"]
            assert csc["readOnlyRootFilesystem"] is True, c["name"]
            assert csc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert csc.get("runAsNonRoot", sc["runAsNonRoot"]) is True, c["name"]
            assert csc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
            assert "privileged" not in csc or csc["privileged"] is False
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], c["name"]
            assert res["limits"]["memory"], c["name"]


def test_the_pod_runs_as_the_image_user_and_the_key_is_readable_by_its_group(kust):
    uid, _, gid = dockerfile_stages()[-1].all("USER")[-1].partition(":")
    for pod in pods(kust):
        sc = pod.spec["securityContext"]
        assert str(sc["runAsUser"]) == uid and str(sc["runAsGroup"]) == (gid or uid)
        (key_volume,) = [v for v in pod.spec["volumes"] if "secret" in v]
        # Owner and group may read; nobody else. fsGroup makes the group the gateway's.
        assert key_volume["secret"]["defaultMode"] == 0o440
        assert str(sc["fsGroup"]) == (gid or uid)


def test_gateway_probes_use_healthz_and_readyz(kust):
    for pod in pods(kust):
        gw = pod.gateway()
        assert probe_path(gw["livenessProbe"], pod) == "/healthz"
        assert probe_path(gw["readinessProbe"], pod) == "/readyz"
        if "startupProbe" in gw:
            assert probe_path(gw["startupProbe"], pod) == "/readyz"


def probe_path(probe: dict, pod: Pod) -> str:
    listen = pod.listen()
    if "httpGet" in probe:
        # The kubelet probes the pod IP: a loopback-only gateway would never answer.
        assert not is_loopback(listen), "httpGet probe on a gateway bound to loopback"
        port = probe["httpGet"]["port"]
        ports = {p["name"]: p["containerPort"] for p in pod.gateway().get("ports", [])}
        assert ports.get(port, port) == parse_listen(listen)[1]
        return probe["httpGet"]["path"]
    command = probe["exec"]["command"]
    assert command[:2] == ["python", healthcheck_path()], command
    assert len(command) == 3
    return command[2]


def test_no_subpath_mounts_and_config_mounted_as_directories(kust):
    for pod in pods(kust):
        for c in pod.containers():
            for m in c.get("volumeMounts", []):
                # A subPath mount never sees the kubelet's ..data swap: no hot reload.
                assert "subPath" not in m and "subPathExpr" not in m, (c["name"], m)
                assert m.get("readOnly") is True, (c["name"], m)
        mounts = pod.mounts(pod.gateway())
        config_dir = pod.config_path().rpartition("/")[0]
        assert config_dir in mounts
        include = yaml.safe_load(pod.config_source().read_text())["include"]
        assert f"{config_dir}/{include}" in mounts, "the include: directory is not mounted"


def test_the_sidecar_listens_on_loopback_and_the_app_uses_it():
    (pod,) = pods(load_kustomization(KUSTOMIZATIONS["sidecar"]))
    listen = pod.listen()
    assert is_loopback(listen), listen
    assert not pod.gateway().get("ports"), "a loopback sidecar has no port to declare"
    # Native sidecar: restartable init container, else it would block the pod.
    assert pod.gateway() in pod.spec["initContainers"]
    assert pod.gateway()["restartPolicy"] == "Always"
    host, port = parse_listen(listen)
    for app in pod.spec["containers"]:
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env["OPENAI_BASE_URL"] == f"http://{host}:{port}/v1"


def test_a_gateway_reachable_by_other_pods_requires_sealed_client_keys(kust):
    for pod in pods(kust):
        if is_loopback(pod.listen()):
            continue
        config = load_config(pod.config_source())
        assert config.auth is not None, "listening beyond loopback without auth.api_keys"
        assert all(ref.kind == "sealed" for ref in config.auth.api_keys)
        assert config.admin is None or config.admin.token.kind == "sealed"


def test_grace_period_exceeds_the_drain(kust):
    for pod in pods(kust):
        gw = pod.gateway()
        grace = float(flag(gw, "--shutdown-grace") or DEFAULT_SHUTDOWN_GRACE)
        delay = float(flag(gw, "--drain-delay") or 0)
        pre_stop = gw.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod.spec["terminationGracePeriodSeconds"] > grace + delay + pre_stop


def test_the_secret_name_matches_the_readme_and_the_example_key():
    component = load_kustomization(EXAMPLE_KEYS, kind="Component")
    ((kind, name),) = component.generated
    assert (kind, name) == ("Secret", "gateway-seal-key")
    assert set(component.generated[(kind, name)]) == {"seal.key"}
    readme = (DEPLOY / "README.md").read_text()
    assert f"kubectl create secret generic {name} --from-file=seal.key=" in readme
    for kust_root in KUSTOMIZATIONS.values():
        for pod in pods(load_kustomization(kust_root)):
            secrets = [v["secret"]["secretName"] for v in pod.spec["volumes"] if "secret" in v]
            assert secrets == [name]


def test_the_example_key_is_committed_despite_the_key_ignore_rule():
    # The top-level .gitignore ignores *.key; example-keys/.gitignore makes the exception.
    proc = subprocess.run(
        ["git", "check-ignore", "--quiet", "deploy/kubernetes/example-keys/seal.key"],
        cwd=REPO,
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 1, "git would ignore the example key"


def test_example_values_are_the_documented_fake_ones():
    ring = Keyring.load(EXAMPLE_KEYS / "seal.key")
    assert ring.kids == (load_public_key(EXAMPLE_KEYS / "seal.pub").kid,)
    seen = set()
    for kust_root in KUSTOMIZATIONS.values():
        for pod in pods(load_kustomization(kust_root)):
            for ref in config_secret_refs(load_config(pod.config_source())):
                assert ref.kind == "sealed", (ref.file, ref.field)
                plain = ring.unseal(ref.text, ref.scope)
                assert plain in EXAMPLE_PLAINTEXTS, (ref.file, ref.field)
                seen.add(plain)
    assert seen == EXAMPLE_PLAINTEXTS


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
def test_kustomize_renders_what_this_test_reads(kust):
    proc = subprocess.run(
        ["kubectl", "kustomize", str(kust.root)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    expected = {(d["kind"], d["metadata"]["name"]) for d in kust.objects} | set(kust.generated)
    assert names == expected
    image = kust.images[GATEWAY_IMAGE]
    for d in rendered:
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
            images = [c["image"] for c in spec.get("initContainers", []) + spec["containers"]]
            assert f"{image['newName']}:{image['newTag']}" in images


# --------------------------------------------------------------------------
# `gateway check` on the files as the pod sees them


def gateway_check(config: Path, extra_env: dict[str, str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra_env)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=RUN_TIMEOUT,
    )
    return proc.returncode, proc.stdout + proc.stderr


def kubelet_volume(directory: Path, files: dict[str, Path]) -> None:
    """Lay files out as the kubelet does for a ConfigMap/Secret volume.

    The files live in a timestamped hidden directory; `..data` points at it,
    and each visible name is a symlink through `..data` (an update swaps
    `..data` in one rename).
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamped = directory / "..2025_01_01_00_00_00.000000001"
    stamped.mkdir()
    for name, source in files.items():
        shutil.copy(source, stamped / name)
    (directory / "..data").symlink_to(stamped.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")


def pod_layout(pod: Pod, root: Path) -> Path:
    """The gateway container's mounts under `root`; returns the config path there."""
    # Outer mounts first: a nested mount point is a directory inside its parent volume.
    for mount_path, files in sorted(pod.mounts(pod.gateway()).items()):
        kubelet_volume(root / mount_path.lstrip("/"), files)
    return root / pod.config_path().lstrip("/")


@pytest.mark.parametrize("key_from", ["GATEWAY_SEAL_KEY_FILE", "seal_key_file"])
def test_gateway_check_passes_on_the_pod_layout_with_the_example_key(kust, tmp_path, key_from):
    (pod,) = pods(kust)
    config = pod_layout(pod, tmp_path)
    key_dir = tmp_path / "etc" / "gateway" / "keys"
    assert (key_dir / "seal.key").is_symlink()
    env = {"GATEWAY_SEAL_KEY_FILE": str(key_dir)} if key_from == "GATEWAY_SEAL_KEY_FILE" else {}
    code, out = gateway_check(config, env)
    assert code == 0, out
    providers = sorted(p.stem for p in (kust.root / "config" / "providers.d").glob("*.yaml"))
    n = len(providers)
    assert f"OK ({n} provider{'s' * (n != 1)}: {', '.join(providers)})" in out
    for plain in EXAMPLE_PLAINTEXTS:
        assert plain not in out


def test_gateway_check_fails_on_the_pod_layout_with_another_key(kust, tmp_path):
    (pod,) = pods(kust)
    config = pod_layout(pod, tmp_path / "root")
    other_key, _, _ = write_keypair(tmp_path / "other")
    code, out = gateway_check(config, {"GATEWAY_SEAL_KEY_FILE": str(other_key)})
    assert code == 1
    example_kid = load_public_key(EXAMPLE_KEYS / "seal.pub").kid
    assert f"sealed with key id '{example_kid}'" in out
    assert "field 'api_key'" in out
    for plain in EXAMPLE_PLAINTEXTS:
        assert plain not in out


# --------------------------------------------------------------------------
# `gateway check --public-key`: the check without the private key


def check_sealed(*configs: Path, public_key: Path = EXAMPLE_KEYS / "seal.pub") -> tuple[int, str]:
    """Run the CI check on each config; (worst exit code, all output)."""
    code, out = 0, ""
    for config in configs:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "check", "--public-key", str(public_key),
             "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=RUN_TIMEOUT,
        )  # fmt: skip
        code = max(code, proc.returncode)
        out += proc.stdout + proc.stderr
    return code, out


def test_check_sealed_passes_on_the_example_configs():
    configs = [
        pod.config_source() for k in KUSTOMIZATIONS.values() for pod in pods(load_kustomization(k))
    ]
    code, out = check_sealed(*configs)
    assert code == 0, out
    assert out.count("OK without unsealing") == len(configs)


def _sidecar_copy(tmp_path: Path, api_key: str) -> Path:
    src = K8S / "config"
    shutil.copytree(src, tmp_path / "config")
    fragment = tmp_path / "config" / "providers.d" / "custom-llm.yaml"
    text, n = re.subn(r"(?m)^api_key: .*$", f"api_key: {api_key}", fragment.read_text())
    assert n == 1
    fragment.write_text(text)
    return tmp_path / "config" / "gateway.yaml"


@pytest.mark.parametrize("case", ["other-key", "other-scope", "plain", "malformed"])
def test_check_sealed_fails_on_values_that_cannot_unseal(tmp_path, case):
    example = load_public_key(EXAMPLE_KEYS / "seal.pub")
    _, other_pub, _ = write_keypair(tmp_path / "other")
    value, expect = {
        "other-key": (load_public_key(other_pub).seal("example-x", "custom-llm"), "key id"),
        "other-scope": (example.seal("example-x", "auth"), "sealed for scope 'auth'"),
        "plain": ("example-plain-text-key", "plain-text secret"),
        "malformed": ("sealed:v1:nothex:custom-llm:AAAA", "malformed"),
    }[case]
    code, out = check_sealed(_sidecar_copy(tmp_path, value))
    assert code == 1, out
    assert "provider 'custom-llm': field 'api_key'" in out and expect in out
    assert "example-plain-text-key" not in out


def test_check_sealed_reports_structural_problems(tmp_path):
    config = _sidecar_copy(tmp_path, "env:UPSTREAM_KEY")
    code, out = check_sealed(config)
    assert code == 0, out  # env: is resolved at run time, not a secret in git
    config.write_text(config.read_text() + "\nlisten: nowhere\n")
    code, out = check_sealed(config)
    assert code == 1 and "field 'listen'" in out


# --------------------------------------------------------------------------
# deploy/docker/healthcheck.py


@pytest.fixture
def healthcheck(monkeypatch) -> ModuleType:
    for name in ("GATEWAY_HEALTHCHECK_URL", "GATEWAY_LISTEN", "GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", HEALTHCHECK_SRC)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_finds_the_address(healthcheck, monkeypatch, tmp_path):
    config = tmp_path / "gateway.yaml"
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    assert healthcheck.base_url() == "http://127.0.0.1:8080"  # no file: the default
    config.write_text("# listen: 1.2.3.4:1\ninclude: x\nlisten: '0.0.0.0:9001'  # all\n")
    assert healthcheck.base_url() == "http://127.0.0.1:9001"
    config.write_text("listen: 127.0.0.2:9002\n")
    assert healthcheck.base_url() == "http://127.0.0.2:9002"
    monkeypatch.setenv("GATEWAY_LISTEN", "[::]:9003")
    assert healthcheck.base_url() == "http://[::1]:9003"
    monkeypatch.setenv("GATEWAY_LISTEN", ":9004")
    assert healthcheck.base_url() == "http://127.0.0.1:9004"
    monkeypatch.setenv("GATEWAY_HEALTHCHECK_URL", "http://127.0.0.1:9005/")
    assert healthcheck.base_url() == "http://127.0.0.1:9005"


def test_healthcheck_fails_when_nothing_listens(healthcheck, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port that is bound but not listening refuses connections
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GATEWAY_LISTEN", f"127.0.0.1:{s.getsockname()[1]}")
        assert healthcheck.main(["healthcheck.py", "/healthz"]) == 1
    assert "unhealthy" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Scaling out: the standalone gateway, and a provider over a headless Service


def standalone_objects(kind: str) -> list[dict]:
    kust = load_kustomization(KUSTOMIZATIONS["standalone"])
    return [d for d in kust.objects if d["kind"] == kind]


def test_the_standalone_gateway_scales_out_with_an_hpa_and_a_pdb():
    (deployment,) = standalone_objects("Deployment")
    (hpa,) = standalone_objects("HorizontalPodAutoscaler")
    (pdb,) = standalone_objects("PodDisruptionBudget")
    assert hpa["apiVersion"] == "autoscaling/v2" and pdb["apiVersion"] == "policy/v1"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The autoscaler owns the count: a fixed one would be reset on every apply.
    assert "replicas" not in deployment["spec"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["resource"]["name"] == "cpu"]
    assert cpu["resource"]["target"]["type"] == "Utilization"
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["resources"]["requests"]["cpu"]  # utilization needs a request
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    # A drain may take a pod while at least one keeps serving.
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_a_provider_is_backed_by_a_headless_service_of_model_server_pods():
    from yarl import URL

    from gateway.config import parse_provider

    root = KUSTOMIZATIONS["standalone"]
    services = {s["metadata"]["name"]: s for s in standalone_objects("Service")}
    discovered = []
    for path in sorted((root / "config" / "providers.d").glob("*.yaml")):
        provider, problems = parse_provider(yaml.safe_load(path.read_text()), path)
        assert problems == [], problems
        if provider.replicas.dns:
            discovered.append(provider)
    assert discovered, "no provider uses DNS discovery"
    for provider in discovered:
        url = URL(provider.base_url)
        service = services[url.host.split(".")[0]]
        assert service["spec"]["clusterIP"] == "None"  # headless: every pod's address
        assert url.port in [p["port"] for p in service["spec"]["ports"]]
        assert service["spec"]["selector"] != {"app.kubernetes.io/name": "gateway"}
