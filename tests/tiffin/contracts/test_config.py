"""Deployment files: valid ones load with defaults; every bad input names the file, the field and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tiffin.contracts.config import Deployment, load_deployments, parse_deployment
from tiffin.contracts.exceptions import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "smollm2.yaml"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(paths: list[Path]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_deployments(paths)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(paths: list[Path]) -> str:
    problems = problems_of(paths)
    assert len(problems) == 1, problems
    return problems[0]


# --- valid files -------------------------------------------------------------------------------------------


def test_minimal_file_loads_with_every_default_filled(tmp_path: Path) -> None:
    path = write(tmp_path, "llama.yaml", "name: llama\nmodel: smollm2\n")

    [dep] = load_deployments([path])

    assert dep.name == "llama"
    assert dep.model == "smollm2"
    assert dep.served_model_name is None
    assert dep.model_name == "llama"
    assert dep.accepted_models == {"llama"}
    assert dep.routing.hosts == []
    assert dep.routing.path_prefix == "/"
    assert dep.routing.models == []
    assert dep.api.concurrency == 32
    assert dep.runner.concurrency == 8
    assert dep.runner.engine_args == {}
    assert dep.runner.env == {}
    assert dep.runner.command is None
    assert dep.runner.startup_timeout_s == 900
    assert dep.limits.max_queue == 100
    assert dep.limits.wait_timeout_s == 600
    assert dep.limits.upstream_timeout_s == 300
    assert dep.limits.max_body_bytes == 1_048_576
    # Serverless by default: both components at zero at rest; one runner (one GPU) at most.
    assert (dep.api.min_replicas, dep.api.max_replicas, dep.api.scale_target) == (0, 4, 32)
    assert (dep.runner.min_replicas, dep.runner.max_replicas, dep.runner.scale_target) == (0, 1, 8)
    assert dep.scaling.idle_period_s == 300
    assert dep.scaling.scale_down_window_s == 60
    # Closed by default: API keys required, each key limited on each deployment.
    assert dep.auth.require_api_key is True
    per_key = dep.auth.per_key
    assert (per_key.requests_per_second, per_key.burst, per_key.concurrency) == (10, 20, 16)


def test_full_file_keeps_given_values_and_normalises_hosts_and_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "llama.yaml",
        """\
        name: llama-3
        model: smollm2
        served_model_name: meta-llama
        routing:
          hosts: [API.Example.com:8443, other.example.com]
          path_prefix: /team/llama/
          models: [llama, llama3]
        api:
          concurrency: 4
        runner:
          concurrency: 2
          engine_args: {max_model_len: 2048, enforce_eager: true, dtype: float32}
          env: {VLLM_CPU_KVCACHE_SPACE: "2"}
          command: [my-server, --port, "{port}"]
          startup_timeout_s: 60
        limits:
          max_queue: 5
          wait_timeout_s: 30
          upstream_timeout_s: 10.5
          max_body_bytes: 2048
        """,
    )

    [dep] = load_deployments([path])

    assert dep.model_name == "meta-llama"
    assert dep.accepted_models == {"meta-llama", "llama", "llama3"}
    assert dep.routing.hosts == ["api.example.com", "other.example.com"]
    assert dep.routing.path_prefix == "/team/llama"
    assert dep.api.concurrency == 4
    assert dep.runner.concurrency == 2
    assert dep.runner.engine_args == {"max_model_len": 2048, "enforce_eager": True, "dtype": "float32"}
    assert dep.runner.env == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert dep.runner.command == ["my-server", "--port", "{port}"]
    assert dep.runner.startup_timeout_s == 60
    assert dep.limits.max_queue == 5
    assert dep.limits.wait_timeout_s == 30
    assert dep.limits.upstream_timeout_s == 10.5
    assert dep.limits.max_body_bytes == 2048


def test_relative_model_folder_resolves_against_the_yaml_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "configs"
    (config_dir / "weights" / "llama").mkdir(parents=True)
    path = write(config_dir, "llama.yaml", "name: llama\nmodel: weights/llama\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter

    [dep] = load_deployments([path])

    assert Path(dep.model) == (config_dir / "weights" / "llama").resolve()
    assert Path(dep.model).is_absolute()


def test_absolute_model_folder_is_kept(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    path = write(tmp_path, "llama.yaml", f"name: llama\nmodel: {weights}\n")

    [dep] = load_deployments([path])

    assert dep.model == str(weights)


def test_folder_of_yaml_files_loads_every_file_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "name: bravo\nmodel: smollm2\n")
    write(tmp_path, "a.yml", "name: alpha\nmodel: smollm2\n")
    write(tmp_path, "c.yaml", "name: charlie\nmodel: smollm2\n")
    write(tmp_path, "notes.txt", "not: a deployment\n")

    deployments = load_deployments([tmp_path])

    assert [d.name for d in deployments] == ["alpha", "bravo", "charlie"]


def test_same_route_and_model_under_different_prefixes_is_no_conflict(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nmodel: smollm2\nserved_model_name: m\nrouting: {path_prefix: /a}\n")
    write(tmp_path, "b.yaml", "name: b\nmodel: smollm2\nserved_model_name: m\nrouting: {path_prefix: /b}\n")

    assert [d.name for d in load_deployments([tmp_path])] == ["a", "b"]


def test_parse_deployment_accepts_an_already_parsed_mapping(tmp_path: Path) -> None:
    dep = parse_deployment({"name": "x", "model": "smollm2"}, tmp_path / "x.yaml")

    assert isinstance(dep, Deployment)
    assert dep.name == "x"


def test_example_file_is_valid() -> None:
    if not EXAMPLE.is_file():
        pytest.skip("examples/smollm2.yaml does not exist yet")

    [dep] = load_deployments([EXAMPLE])

    assert dep.name == "smollm2"
    assert dep.model == "smollm2"


# --- bad field values: FILE: FIELD: PROBLEM ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "field", "problem"),
    [
        pytest.param(
            "name: x\nmodel: smollm2\nlimits: {max_queeu: 5}\n",
            "limits.max_queeu",
            "unknown field",
            id="typo-in-nested-field",
        ),
        pytest.param("name: x\nmodel: smollm2\nreplicas: 3\n", "replicas", "unknown field", id="typo-at-top"),
        pytest.param(
            "name: x\nmodel: smollm2\nlimits: {max_queue: lots}\n",
            "limits.max_queue",
            "valid integer",
            id="wrong-type",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrouting: {hosts: example.com}\n",
            "routing.hosts",
            "valid list",
            id="wrong-type-list",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nlimits: 5\n",
            "limits",
            "valid dictionary",
            id="section-not-a-mapping",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nlimits: {max_queue: 0}\n",
            "limits.max_queue",
            "greater than or equal to 1",
            id="out-of-range-low",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\napi: {concurrency: 10001}\n",
            "api.concurrency",
            "less than or equal to 10000",
            id="out-of-range-high",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nlimits: {wait_timeout_s: 0}\n",
            "limits.wait_timeout_s",
            "greater than 0",
            id="out-of-range-timeout",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nlimits: {max_body_bytes: 10}\n",
            "limits.max_body_bytes",
            "greater than or equal to 1024",
            id="out-of-range-body",
        ),
        pytest.param("name: Llama_3\nmodel: smollm2\n", "name", "lowercase letters", id="bad-name-chars"),
        pytest.param("name: -llama\nmodel: smollm2\n", "name", "lowercase letters", id="bad-name-leading-dash"),
        pytest.param(f"name: {'a' * 64}\nmodel: smollm2\n", "name", "1-63", id="bad-name-too-long"),
        pytest.param("model: smollm2\n", "name", "Field required", id="missing-name"),
        pytest.param("name: x\n", "model", "Field required", id="missing-model"),
        pytest.param("name: x\nmodel: '  '\n", "model", "must name a folder or a built-in model", id="blank-model"),
        pytest.param("name: x\nmodel: 5\n", "model", "valid string", id="model-not-a-string"),
        pytest.param(
            "name: x\nmodel: smollm2\nrouting: {path_prefix: llama}\n",
            "routing.path_prefix",
            "must start with '/'",
            id="prefix-without-slash",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrouting: {path_prefix: /llama/v1}\n",
            "routing.path_prefix",
            "must not include /v1",
            id="prefix-with-v1",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrouting: {path_prefix: /v1/llama}\n",
            "routing.path_prefix",
            "must not include /v1",
            id="prefix-starting-with-v1",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrunner: {engine_args: {model: other}}\n",
            "runner.engine_args",
            "'model' is set by tiffin",
            id="reserved-engine-arg-model",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrunner: {engine_args: {port: 9000}}\n",
            "runner.engine_args",
            "'port' is set by tiffin",
            id="reserved-engine-arg-port",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrunner: {engine_args: {served-model-name: y}}\n",
            "runner.engine_args",
            "'served-model-name' is set by tiffin",
            id="reserved-engine-arg-dashed",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\napi: {min_replicas: 3, max_replicas: 2}\n",
            "api",
            "min_replicas (3) is above max_replicas (2)",
            id="min-above-max",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrunner: {concurrency: 4, target: 6}\n",
            "runner",
            "target (6) is above concurrency (4)",
            id="target-above-concurrency",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrunner: {min_replicas: -1}\n",
            "runner.min_replicas",
            "greater than or equal to 0",
            id="negative-min-replicas",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nscaling: {idle_period_s: -5}\n",
            "scaling.idle_period_s",
            "greater than or equal to 0",
            id="negative-idle-period",
        ),
        pytest.param(
            "name: x\nmodel: smollm2\nrunner: {engine_args: {max_model_len: {a: 1}}}\n",
            "runner.engine_args",
            "'max_model_len' must be a string, number, boolean or list",
            id="engine-arg-mapping-value",
        ),
    ],
)
def test_bad_field_is_reported_with_file_field_and_problem(
    tmp_path: Path, yaml_text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, "dep.yaml", yaml_text)

    line = only_problem([path])

    assert line.startswith(f"{path}: {field}: "), line
    assert problem in line


def test_auth_opens_a_deployment_only_explicitly_and_lifts_limits_with_null(tmp_path: Path) -> None:
    path = write(tmp_path, "dep.yaml", """\
        name: x
        model: smollm2
        auth:
          require_api_key: false
          per_key: {requests_per_second: null, burst: 5, concurrency: null}
        """)  # fmt: skip

    [dep] = load_deployments([path])

    assert dep.auth.require_api_key is False
    assert (dep.auth.per_key.requests_per_second, dep.auth.per_key.burst, dep.auth.per_key.concurrency) == (
        None,
        5,
        None,
    )


@pytest.mark.parametrize(
    ("auth", "field", "problem"),
    [
        ("{require_api_key: maybe}", "auth.require_api_key", "valid boolean"),
        ("{per_key: {burst: 0}}", "auth.per_key.burst", "greater than or equal to 1"),
        ("{per_key: {requests_per_second: -1}}", "auth.per_key.requests_per_second", "greater than 0"),
        ("{per_key: {concurrency: 0}}", "auth.per_key.concurrency", "greater than or equal to 1"),
        ("{api_keys: [abc]}", "auth.api_keys", "unknown field"),
    ],
)
def test_bad_auth_settings_name_the_field(tmp_path: Path, auth: str, field: str, problem: str) -> None:
    path = write(tmp_path, "dep.yaml", f"name: x\nmodel: smollm2\nauth: {auth}\n")

    line = only_problem([path])

    assert line.startswith(f"{path}: {field}: "), line
    assert problem in line


def test_unknown_field_says_to_check_the_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, "dep.yaml", "name: x\nmodel: smollm2\nrouting: {path_prefx: /a}\n")

    assert only_problem([path]) == f"{path}: routing.path_prefx: unknown field (check the spelling)"


def test_validation_problems_do_not_carry_pydantics_value_error_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, "dep.yaml", "name: x\nmodel: smollm2\nrouting: {path_prefix: nope}\n")

    assert only_problem([path]) == f"{path}: routing.path_prefix: must start with '/'"


def test_several_bad_fields_in_one_file_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dep.yaml",
        "name: Bad_Name\nmodel: smollm2\nlimits: {max_queue: 0, wait_timeout_s: -1}\napi: {concurency: 2}\n",
    )

    problems = problems_of([path])

    fields = sorted(p.removeprefix(f"{path}: ").split(": ")[0] for p in problems)
    assert fields == ["api.concurency", "limits.max_queue", "limits.wait_timeout_s", "name"]


def test_missing_model_folder_names_the_resolved_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "dep.yaml", "name: x\nmodel: weights/nowhere\n")

    line = only_problem([path])

    assert line.startswith(f"{path}: model: ")
    assert str(tmp_path / "weights" / "nowhere") in line
    assert "does not exist" in line


def test_model_path_that_is_a_file_not_a_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    path = write(tmp_path, "dep.yaml", "name: x\nmodel: weights.bin\n")

    assert only_problem([path]).startswith(f"{path}: model: folder ")


def test_invalid_yaml_syntax_reports_the_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "dep.yaml", "name: x\nmodel: smollm2\nlimits:\n  max_queue: [1, 2\n")

    line = only_problem([path])

    assert line.startswith(f"{path}: line ")
    assert "not valid YAML" in line
    line_no = int(line.removeprefix(f"{path}: line ").split(":")[0])
    assert 4 <= line_no <= 5  # the unclosed list starts on line 4; PyYAML notices at the end of input


def test_yaml_error_points_at_the_offending_line(tmp_path: Path) -> None:
    path = write(tmp_path, "dep.yaml", "name: x\nmodel: smollm2\nfoo: bar: baz\n")

    assert only_problem([path]).startswith(f"{path}: line 3: not valid YAML")


@pytest.mark.parametrize(
    ("text", "type_name"),
    [("- name: x\n  model: smollm2\n", "list"), ("just a string\n", "str"), ("", "NoneType"), ("42\n", "int")],
)
def test_top_level_that_is_not_a_mapping_is_rejected(tmp_path: Path, text: str, type_name: str) -> None:
    path = write(tmp_path, "dep.yaml", text)

    assert only_problem([path]) == f"{path}: (top level): must be a mapping of fields, got {type_name}"


def test_duplicate_deployment_names_across_files_name_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "name: llama\nmodel: smollm2\nrouting: {path_prefix: /a}\n")
    second = write(tmp_path, "b.yaml", "name: llama\nmodel: smollm2\nrouting: {path_prefix: /b}\n")

    line = only_problem([tmp_path])

    assert line == f"{second}: name: 'llama' is also the name in {first}"


def test_conflicting_routes_across_files_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nmodel: smollm2\nserved_model_name: shared\n")
    second = write(tmp_path, "b.yaml", "name: b\nmodel: smollm2\nrouting: {models: [shared]}\n")

    line = only_problem([tmp_path])

    assert line.startswith(f"{second}: routing: ")
    assert "'shared'" in line
    assert "deployment 'a'" in line


def test_conflicting_routes_on_the_same_host_are_reported_and_prefix_slash_is_normalised(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        "name: a\nmodel: smollm2\nserved_model_name: m\nrouting: {hosts: [h.example], path_prefix: /p}\n",
    )
    second = write(
        tmp_path,
        "b.yaml",
        "name: b\nmodel: smollm2\nserved_model_name: m\nrouting: {hosts: [H.example:443], path_prefix: /p/}\n",
    )

    line = only_problem([tmp_path])

    assert line.startswith(f"{second}: routing: host h.example, prefix /p and model 'm'")


def test_missing_path_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    assert only_problem([missing]) == f"{missing}: no such file or folder"


def test_folder_without_yaml_files_is_reported(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")

    assert only_problem([tmp_path]) == f"{tmp_path}: folder has no .yaml files"


def test_problems_in_several_files_are_reported_at_once(tmp_path: Path) -> None:
    typo = write(tmp_path, "a.yaml", "name: a\nmodel: smollm2\nlimts: {}\n")
    syntax = write(tmp_path, "b.yaml", "name: b\nmodel: [smollm2\n")
    listed = write(tmp_path, "c.yaml", "- 1\n")
    write(tmp_path, "d.yaml", "name: dup\nmodel: smollm2\n")
    dup = write(tmp_path, "e.yaml", "name: dup\nmodel: smollm2\nrouting: {path_prefix: /e}\n")
    folder = write(tmp_path, "f.yaml", "name: f\nmodel: missing-folder\n")
    write(tmp_path, "g.yaml", "name: good\nmodel: smollm2\nrouting: {path_prefix: /g}\n")

    problems = problems_of([tmp_path])

    by_file: dict[str, list[str]] = {}
    for line in problems:
        file = line.split(": ", 1)[0]
        by_file.setdefault(file, []).append(line)
    assert sorted(by_file) == sorted(str(p) for p in (typo, syntax, listed, dup, folder))
    assert by_file[str(typo)] == [f"{typo}: limts: unknown field (check the spelling)"]
    assert by_file[str(syntax)][0].startswith(f"{syntax}: line ")
    assert by_file[str(listed)][0].startswith(f"{listed}: (top level): ")
    assert by_file[str(dup)][0].startswith(f"{dup}: name: 'dup' is also the name in ")
    assert by_file[str(folder)][0].startswith(f"{folder}: model: folder ")


def test_an_empty_folder_is_no_deployments_when_allowed(tmp_path: Path) -> None:
    # The interceptor and the scaler on an empty cluster; `tiffin up` and `tiffin check` still refuse it.
    assert load_deployments([tmp_path], allow_empty=True) == []
    with pytest.raises(ConfigError):
        load_deployments([tmp_path / "absent"], allow_empty=True)
