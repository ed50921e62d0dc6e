"""compose.yaml, Dockerfile and .dockerignore, checked structurally (no Docker engine needed).

Every service command is parsed by the real program's own parser: Flower's argparse parsers
for ``flower-*``, the click app behind ``fedgate`` and ``flwr``. References (networks,
volumes, secrets, configs, ``depends_on``, build contexts) must exist; the transport must be
TLS with SuperNode authentication, devices must reach only the fleet proxies, and the proxy
configs must be exactly what ``fedgate.server.launch.fleet_proxy`` generates. ``docker compose
config`` runs too, but only where a Docker engine is available.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import io
import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import typer
import yaml
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from fedgate.clients.profiles import PROFILES
from fedgate.server.launch.fleet_proxy import (
    ProxyPaths,
    ProxySpec,
    check_config,
    render_main_config,
    render_server_block,
)
from fedgate.server.trust.pki import DEFAULT_NAMES, ensure_region_pki

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
FLOWER_VERSION = importlib.metadata.version("flwr")
LONG_RUNNING = {"unless-stopped", "always", "on-failure"}
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's variable substitution with every variable unset: defaults, else a stand-in."""

    def sub(m: re.Match[str]) -> str:
        if m.group("op") in (":-", "-"):
            return m.group("arg")
        return f"value-of-{m.group('name').lower()}"

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def argv(service: dict[str, Any]) -> list[str]:
    """Entrypoint + command as the container runs them (exec form only)."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value is None:
            continue
        assert isinstance(value, list), f"{key} must use the exec (list) form, got {value!r}"
        parts += [interpolate(str(v)) for v in value]
    return parts


def _names(value: Any) -> list[str]:
    """Names from a list or a mapping (networks, depends_on, secrets, configs)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value)
    return [v if isinstance(v, str) else v["source"] for v in value]


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry, short or long syntax."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            mounts.append((source, target, bool(mode) and "ro" in mode[0].split(",")))
        else:
            mounts.append((entry["source"], entry["target"], bool(entry.get("read_only"))))
    return mounts


def mount_targets(service: dict[str, Any]) -> list[str]:
    targets = [t for _, t, _ in _volume_mounts(service)]
    targets += [f"/run/secrets/{name}" for name in _names(service.get("secrets"))]
    for config in service.get("configs", []):
        targets.append(config["target"] if isinstance(config, dict) else f"/{config}")
    return targets


# ----------------------------------------------------------------------------- command parsing


class BadCommand(AssertionError):
    """A compose command that its program would refuse."""


def _argparse(parser: argparse.ArgumentParser, args: list[str], prog: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        raise BadCommand(f"{prog} {' '.join(args)}: {err.getvalue().strip()}") from None


@functools.cache
def fedgate_command() -> click.Command:
    """The real ``fedgate`` click app, with every verb (and ``region init``) registered."""
    import fedgate.cli as cli
    from fedgate.server.cli.pki import register as register_pki

    if not any(c.name == "up" for c in cli.app.registered_commands):
        cli._register()
    if not any(c.name == "init" for c in cli.region_app.registered_commands):
        register_pki(cli.region_app)  # until the lead hooks `region init` into fedgate.cli
    return typer.main.get_command(cli.app)


@functools.cache
def flwr_command() -> click.Command:
    from flwr.cli.app import app

    return typer.main.get_command(app)


def parse_click(command: click.Command, args: list[str], prog: str) -> click.Context:
    """Resolve sub-commands and parse every option exactly as click would, without running."""
    name = prog
    parent = None
    try:
        while True:
            ctx = command.make_context(name, list(args), parent=parent)
            if not isinstance(command, click.Group):
                return ctx
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                raise BadCommand(f"{prog}: no sub-command given")
            name, sub, args = command.resolve_command(ctx, rest)
            assert sub is not None
            command, parent = sub, ctx
    except click.exceptions.Exit as exc:  # --help and the like: not a service command
        raise BadCommand(f"{prog}: exits before doing anything ({exc})") from None
    except click.ClickException as exc:
        raise BadCommand(f"{prog} {' '.join(args)}: {exc.format_message()}") from None


@dataclass(frozen=True)
class Parsed:
    program: str
    args: list[str]
    options: Any  # argparse Namespace or click Context


def parse_command(words: list[str]) -> Parsed:
    """Parse ``words`` with the real parser of its program; ``BadCommand`` if it would fail."""
    if not words:
        raise BadCommand("empty command")
    program, args = PurePosixPath(words[0]).name, words[1:]
    if program == "flower-superlink":
        return Parsed(program, args, _argparse(_parse_args_run_superlink(), args, program))
    if program == "flower-supernode":
        return Parsed(program, args, _argparse(_parse_args_run_supernode(), args, program))
    if program == "flower-superexec":
        return Parsed(program, args, _argparse(superexec_parser(), args, program))
    if program == "fedgate":
        return Parsed(program, args, parse_click(fedgate_command(), args, program))
    if program == "flwr":
        return Parsed(program, args, parse_click(flwr_command(), args, program))
    if program == "nginx":
        return Parsed(program, args, _parse_nginx(args))
    if program in ("postgres", "docker-entrypoint.sh"):
        return Parsed(program, args, _parse_postgres(args))
    raise BadCommand(f"{program!r} is not a fedgate, Flower, nginx or postgres command")


def _parse_nginx(args: list[str]) -> dict[str, str]:
    """nginx's own options (nginx -h): value flags -c -g -p -e -s, switches -t -T -q -v -V."""
    options, i = {}, 0
    while i < len(args):
        flag = args[i]
        if flag in ("-c", "-g", "-p", "-e", "-s") and i + 1 < len(args):
            options[flag] = args[i + 1]
            i += 2
        elif flag in ("-t", "-T", "-q", "-v", "-V"):
            options[flag] = ""
            i += 1
        else:
            raise BadCommand(f"nginx: invalid option {flag!r}")
    if options.get("-g", "daemon off;").rstrip(";").strip() not in ("daemon off",):
        raise BadCommand("nginx in a container must run in the foreground (-g 'daemon off;')")
    return options


def _parse_postgres(args: list[str]) -> dict[str, str]:
    settings, i = {}, 0
    while i < len(args):
        if args[i] == "-c" and i + 1 < len(args) and "=" in args[i + 1]:
            key, value = args[i + 1].split("=", 1)
            settings[key] = value
            i += 2
        else:
            raise BadCommand(f"postgres: unexpected argument {args[i]!r} (use -c key=value)")
    return settings


def parsed(name: str) -> Parsed:
    return parse_command(argv(services()[name]))


def _of_program(program: str) -> list[str]:
    """Services whose command runs ``program``."""
    return [
        n for n, s in services().items() if argv(s) and parse_command(argv(s)).program == program
    ]


def _region(name: str) -> str:
    return name.split("-")[1]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ----------------------------------------------------------------------------- structure


def test_compose_has_the_regional_topology():
    names = set(services())
    for region in ("eu", "us"):
        for role in ("init", "postgres", "superlink", "fleet", "serverapp"):
            assert f"{role}-{region}" in names
        for device in ("phone", "pi"):
            assert {f"supernode-{region}-{device}", f"clientapp-{region}-{device}"} <= names
            assert f"enroll-{region}-{device}" in names
    text = COMPOSE.read_text()
    for tier in ("coordinator", "release-server", "edge-"):
        assert tier in text, f"no place reserved for the global tier's {tier}"


def test_compose_follows_the_host_layout_fedgate_up_and_the_netns_test_use():
    """compose.yaml is the compose rendering of ``fedgate.server.launch.hosts``'s layout:
    the same hosts and names (devices reach ``fleet-<region>``), and each service on the
    networks the layout gives it (devices on their region's edge network only)."""
    from fedgate.server.launch.compose import COMPOSE_FEDERATION
    from fedgate.server.launch.hosts import compose_layout, compose_networks, fleet_name

    layout = compose_layout(COMPOSE_FEDERATION)
    svc = services()
    for name, networks in compose_networks(layout).items():
        assert set(_names(svc[name].get("networks", []))) == networks, name
    for region in layout.regions.values():
        fleet = fleet_name(region.region)
        assert fleet == region.server.reach
        for device in region.devices:
            words = argv(svc[device.address])
            host, _ = _host_port(words[words.index("--superlink") + 1])
            assert host == fleet, device.address


def test_every_reference_exists_and_every_declaration_is_used():
    top = compose()
    used: dict[str, set[str]] = {"networks": set(), "volumes": set(), "secrets": set()}
    used["configs"] = set()
    for name, svc in services().items():
        for net in _names(svc.get("networks")):
            assert net in top["networks"], f"{name}: unknown network {net}"
            used["networks"].add(net)
        mode = svc.get("network_mode", "")
        if mode:
            # a service's namespace, or none at all (the offline release step)
            assert mode == "none" or (mode.startswith("service:") and mode[8:] in services()), (
                f"{name}: {mode}"
            )
            assert "networks" not in svc, f"{name}: network_mode excludes networks"
        for source, target, _ in _volume_mounts(svc):
            assert target.startswith("/"), f"{name}: mount target {target} must be absolute"
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in top["volumes"], f"{name}: unknown volume {source}"
                used["volumes"].add(source)
        for kind in ("secrets", "configs"):
            for item in _names(svc.get(kind)):
                assert item in top[kind], f"{name}: unknown {kind[:-1]} {item}"
                used[kind].add(item)
    for kind, names in used.items():
        assert set(top[kind]) == names, f"declared but unused {kind}: {set(top[kind]) - names}"
    for name, secret in top["secrets"].items():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), name


def test_images_are_pinned_and_builds_exist():
    for name, svc in services().items():
        image = svc.get("image", "")
        assert image or "build" in svc, f"{name}: neither image nor build"
        if image:
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: image {image} is not pinned"
            if repo.startswith("flwr/"):
                assert tag == FLOWER_VERSION, (
                    f"{name}: {image} but fedgate pins flwr {FLOWER_VERSION}"
                )
        build = svc.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert context.is_dir() and (context / dockerfile).is_file(), name
    assert {s.get("image") for s in services().values()} >= {
        f"flwr/superlink:{FLOWER_VERSION}", f"flwr/supernode:{FLOWER_VERSION}", "postgres:15"
    }  # fmt: skip


def test_depends_on_targets_exist_and_their_conditions_can_be_met():
    for name, svc in services().items():
        deps = svc.get("depends_on") or {}
        for dep in _names(deps):
            assert dep in services(), f"{name} depends on unknown service {dep}"
            target = services()[dep]
            condition = deps[dep]["condition"] if isinstance(deps, dict) else "service_started"
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy"
            if condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is waited on as a one-shot"
            own, theirs = set(svc.get("profiles", [])), set(target.get("profiles", []))
            assert not theirs or own & theirs, f"{name} depends on {dep}, outside its profiles"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart():
    for name, svc in services().items():
        restart = svc.get("restart")
        assert restart in LONG_RUNNING | {"no"}, f"{name}: set an explicit restart policy"
        if restart in LONG_RUNNING:
            test = svc.get("healthcheck", {}).get("test")
            assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name


# ----------------------------------------------------------------------------- commands


@pytest.mark.parametrize("name", sorted(n for n, s in services().items() if argv(s)))
def test_every_command_is_a_real_verb_whose_flags_parse(name):
    parse_command(argv(services()[name]))


@pytest.mark.parametrize(
    "words",
    [
        ["flower-superlink", "--no-such-flag"],
        ["flower-supernode", "--isolation", "threads"],
        ["flower-superexec", "--insecure"],  # --runtime-api-address is required
        ["fedgate", "region", "init", "--bogus"],
        ["fedgate", "region", "teleport"],
        ["fedgate", "client", "enroll", "--region", "eu"],  # --token and --profile missing
        ["flwr", "run", "--no-such-flag"],
        ["nginx", "-x"],
        ["nginx", "-g", "daemon on;"],
        ["postgres", "--fsync=off"],
        ["sh", "-c", "fedgate up"],
        [],
    ],
)
def test_the_command_checker_rejects_commands_their_programs_would_refuse(words):
    with pytest.raises(BadCommand):
        parse_command(words)


def test_the_command_checker_accepts_known_good_commands():
    parse_command(["flwr", "run", ".", "eu", "--stream"])
    parse_command(["fedgate", "region", "run", "--region", "eu", "--rounds", "2"])
    parse_command(["postgres", "-c", "max_connections=50"])


def _paths_in(words: list[str]) -> list[str]:
    """Absolute paths a command refers to (arguments, ``--flag=/x`` and node-config values)."""
    paths = []
    for word in words[1:]:
        for candidate in re.findall(r"(?:^|[=' ])(/[A-Za-z0-9._/-]+)", word):
            paths.append(candidate)
    return paths


@pytest.mark.parametrize("name", sorted(n for n, s in services().items() if argv(s)))
def test_paths_in_commands_lie_in_what_the_service_mounts(name):
    svc = services()[name]
    targets = mount_targets(svc)
    for path in _paths_in(argv(svc)):
        assert any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets), (
            f"{name}: {path} is not inside any mount {targets}"
        )
    env = svc.get("environment") or {}
    if "PGPASSFILE" in env:
        assert env["PGPASSFILE"] in targets, f"{name}: PGPASSFILE is not a mounted secret"


# ----------------------------------------------------------------------------- transport


def test_superlinks_serve_tls_with_supernode_auth_on_the_operator_address_only():
    links = _of_program("flower-superlink")
    assert sorted(links) == ["superlink-eu", "superlink-us"]
    for name in links:
        opts = parsed(name).options
        assert not opts.insecure and opts.enable_supernode_auth, name
        assert opts.ssl_certfile and opts.ssl_keyfile and opts.ssl_ca_certfile, name
        assert opts.isolation == "process" and not opts.runtime_dependency_install, name
        for port in services()[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def _proxy_port(proxy: str) -> int:
    config = services()[proxy]["configs"][0]["source"]
    listen = re.search(r"listen \S+:(\d+) ssl;", compose()["configs"][config]["content"])
    assert listen, f"{proxy}: its config does not listen with TLS"
    return int(listen.group(1))


def test_supernodes_use_tls_their_node_key_and_only_the_fleet_proxy():
    nodes = _of_program("flower-supernode")
    assert len(nodes) == 4
    link_networks = {
        net for n in _of_program("flower-superlink") for net in _names(services()[n]["networks"])
    }
    for name in nodes:
        opts = parsed(name).options
        assert not opts.insecure and opts.root_certificates and opts.auth_supernode_private_key
        host, port = _host_port(opts.superlink)
        assert host == f"fleet-{_region(name)}" and port == _proxy_port(host), name
        assert not set(_names(services()[name]["networks"])) & link_networks, (
            f"{name} shares a network with a SuperLink: devices must reach only the proxy"
        )
        config = parse_config_args([opts.node_config])
        assert config["region"] == _region(name) and config["profile"] in PROFILES
        assert config["profile"] == name.rsplit("-", 1)[1]


def test_executors_reach_their_runtime_api_safely():
    for name in _of_program("flower-superexec"):
        opts = parsed(name).options
        host, port = _host_port(opts.runtime_api_address)
        svc = services()[name]
        if name.startswith("serverapp-"):
            link = f"superlink-{_region(name)}"
            assert host == link and not opts.insecure and opts.root_certificates
            assert port == int(parsed(link).options.port)
        else:  # a ClientApp executor: loopback inside its SuperNode's network namespace
            node = svc["network_mode"].removeprefix("service:")
            assert host == "127.0.0.1" and port == int(parsed(node).options.port)
            assert name.removeprefix("clientapp-") == node.removeprefix("supernode-")
        assert not opts.runtime_dependency_install, name


def test_certificates_name_every_host_their_clients_use():
    for region in ("eu", "us"):
        init = parsed(f"init-{region}").options.params
        names = set(DEFAULT_NAMES) | set(init["host"])
        content = compose()["configs"][f"fleet-{region}-conf"]["content"]
        wanted = {re.search(r"proxy_ssl_name (\S+);", content).group(1)}
        for node in _of_program("flower-supernode"):
            if _region(node) == region:
                wanted.add(_host_port(parsed(node).options.superlink)[0])
        wanted.add(_host_port(parsed(f"serverapp-{region}").options.runtime_api_address)[0])
        assert wanted <= names, f"region {region}: certificate lacks {wanted - names}"


def _compose_proxy_spec(region: str, tls: Path) -> ProxySpec:
    link = parsed(f"superlink-{region}").options
    return ProxySpec(
        listen_port=_proxy_port(f"fleet-{region}"),
        upstream=f"superlink-{region}:{link.port}",
        server_cert=tls / "server.pem",
        server_key=tls / "server.key",
        upstream_ca=tls / "ca.pem",
        upstream_name=f"superlink-{region}",
        listen_host="0.0.0.0",
    )


@pytest.mark.parametrize("region", ["eu", "us"])
def test_proxy_configs_are_the_generated_fleet_only_config(region):
    content = interpolate(compose()["configs"][f"fleet-{region}-conf"]["content"])
    mounts = {t: s for s, t, _ in _volume_mounts(services()[f"fleet-{region}"])}
    assert "/tls" in mounts
    assert content == render_server_block(_compose_proxy_spec(region, Path("/tls")))
    target = services()[f"fleet-{region}"]["configs"][0]["target"]
    assert target == "/etc/nginx/conf.d/default.conf"


@pytest.mark.parametrize("region", ["eu", "us"])
def test_proxy_configs_pass_nginx_t(tmp_path, region):
    """The compose config, with its paths and upstream made local, is accepted by nginx."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is required: run .ci/nginx.sh", pytrace=False)
    tls = ensure_region_pki(tmp_path, region).tls
    content = interpolate(compose()["configs"][f"fleet-{region}-conf"]["content"])
    local = content.replace('"/tls/', f'"{tls.directory}/')
    local = re.sub(r"server superlink-\w+:(\d+);", r"server 127.0.0.1:\1;", local)
    spec = _compose_proxy_spec(region, tls.directory)
    spec = dataclasses.replace(spec, upstream=f"127.0.0.1:{_host_port(spec.upstream)[1]}")
    assert local == render_server_block(spec)  # so the checked config holds exactly `local`
    paths = ProxyPaths(tmp_path / "proxy")
    for directory in (paths.state_dir, paths.error_log.parent, paths.temp):
        directory.mkdir(parents=True, exist_ok=True)
    paths.conf.write_text(render_main_config(spec, paths))
    check_config(paths)


# ----------------------------------------------------------------------------- secrets, image


def test_no_secret_values_in_compose():
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE", re.I)
    for name, svc in services().items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if secretish.search(key):
                assert str(value).startswith("/run/secrets/"), f"{name}: {key} holds a value"
        for word in argv(svc):
            assert "BEGIN" not in word and "PRIVATE KEY" not in word, name
    for name, svc in services().items():
        words = [str(w) for w in svc.get("command") or []]
        for flag, value in itertools.pairwise(words):
            if flag in ("--token", "--password"):
                assert _VAR.fullmatch(value), f"{name}: {flag} must come from the environment"
    assert not (ROOT / "secrets").exists() or not any((ROOT / "secrets").iterdir()), (
        "secret files must not live in the repository"
    )


def test_dockerfile_is_multistage_pinned_non_root_and_cpu_only():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base
    final = text[text.rfind("\nFROM ") :]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0"), "the runtime stage must drop root"
    assert re.search(r"--uid 49999 .*--gid 49999|--gid 49999.*--uid 49999", final)
    assert re.search(r"download\.pytorch\.org/whl/cpu\S*\s+\"?torch==2\.13\.0", text)
    for line in re.findall(r"^(?:COPY|ADD)\s+(.+)$", text, re.M):
        assert not re.search(r"secret|\.key|\.pem|\.db|\.venv|\.git", line), line


def test_dockerignore_keeps_state_and_keys_out_of_the_build_context():
    rules = [
        r.strip()
        for r in (ROOT / ".dockerignore").read_text().splitlines()
        if r.strip() and not r.startswith("#")
    ]
    assert rules[0] == "**", "start from nothing and allow only the sources"
    for needed in ("**/*.key", "**/*.pem", "**/*.db", "**/secrets"):
        assert needed in rules
    allowed = {r[1:] for r in rules if r.startswith("!")}
    assert allowed >= {"pyproject.toml", "fedgate", "server", "clients", "strategies", "models"}
    assert not allowed & {".venv", ".git", "tests", "secrets"}


def _docker_engine() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return "no Docker engine reachable (`docker info` failed)"
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if plugin.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def test_docker_compose_config_accepts_the_file(tmp_path):
    reason = _docker_engine()
    if reason:
        pytest.skip(f"docker compose config not run: {reason}")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("compose.yaml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, project / name)
    (project / "secrets").mkdir()
    for secret in compose()["secrets"].values():
        (project / secret["file"]).write_text("placeholder\n")
    res = subprocess.run(
        ["docker", "compose", "--file", "compose.yaml", "--profile", "tools", "--profile",
         "enroll", "--profile", "devices", "config", "--quiet"],
        cwd=project, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
