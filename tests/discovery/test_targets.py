"""The target registry: keys and their priority, last-wins, service_name, public labels."""

from __future__ import annotations

import pytest

from agent.discovery import Target, build_targets

CID = "a" * 64
CID2 = "b" * 64


@pytest.mark.parametrize(
    ("labels", "key"),
    [
        ({"__process_pid__": "42", "__container_id__": CID}, ("pid", 42)),
        ({"__container_id__": CID, "__meta_docker_container_id": CID2}, ("container", CID)),
        ({"__meta_kubernetes_pod_container_id": f"containerd://{CID}"}, ("container", CID)),
        ({"__meta_kubernetes_pod_container_id": f"docker://{CID}"}, ("container", CID)),
        ({"__meta_kubernetes_pod_container_id": f"cri-o://{CID}"}, ("container", CID)),
        (
            {
                "__meta_kubernetes_pod_container_id": f"containerd://{CID}",
                "__meta_docker_container_id": CID2,
            },
            ("container", CID),
        ),
        ({"__meta_docker_container_id": CID2}, ("container", CID2)),
        ({"__meta_dockerswarm_task_container_id": CID2}, ("container", CID2)),
        (  # an unparsable pid falls through to the container keys
            {"__process_pid__": "not-a-pid", "__container_id__": CID},
            ("container", CID),
        ),
        ({"__process_pid__": "0", "__container_id__": CID}, ("container", CID)),
        ({"__process_pid__": "", "__container_id__": CID}, ("container", CID)),
        ({"__container_id__": "", "__meta_docker_container_id": CID2}, ("container", CID2)),
    ],
)
def test_the_first_key_present_wins(labels, key):
    (target,) = build_targets([labels])
    assert target.key == key


@pytest.mark.parametrize(
    "labels",
    [
        {"__meta_kubernetes_pod_container_id": f"rkt://{CID}"},
        # an unknown scheme ends the search: the docker label is not consulted
        {"__meta_kubernetes_pod_container_id": f"rkt://{CID}", "__meta_docker_container_id": CID2},
        {"__meta_kubernetes_pod_container_id": "containerd://"},
        {"__process_pid__": str(2**32)},  # not a uint32
        {"__process_pid__": "-1"},
        {"__address__": "10.0.0.1:80"},
        {},
    ],
)
def test_targets_without_a_usable_key_are_skipped_and_counted(labels):
    targets = build_targets([labels, {"__process_pid__": "1"}])
    assert targets.skipped == 1
    assert len(targets) == 1


def test_prefix_is_stripped_and_container_id_injected():
    (target,) = build_targets([{"__meta_kubernetes_pod_container_id": f"containerd://{CID}"}])
    assert target.container_id == CID and target.pid is None
    assert target.get("__container_id__") == CID


def test_the_last_target_with_a_container_id_wins():
    targets = build_targets(
        [
            {"__meta_kubernetes_pod_container_id": f"containerd://{CID}", "port": "80"},
            {"__container_id__": CID2, "port": "1"},
            {"__meta_kubernetes_pod_container_id": f"containerd://{CID}", "port": "443"},
            {"__process_pid__": "7", "n": "first"},
            {"__process_pid__": "7", "n": "second"},
        ]
    )
    assert len(targets) == 3
    assert targets.match(1, CID).get("port") == "443"
    assert targets.match(7, None).get("n") == "second"


def test_a_pid_target_wins_over_a_container_target():
    targets = build_targets(
        [
            {"__process_pid__": "42", "service_name": "by-pid"},
            {"__container_id__": CID, "service_name": "by-container"},
        ]
    )
    assert targets.match(42, CID).service_name == "by-pid"
    assert targets.match(43, CID).service_name == "by-container"
    assert targets.match(43, None) is None
    assert targets.match(43, CID2) is None


@pytest.mark.parametrize(
    ("labels", "service_name"),
    [
        ({"service_name": "mine", "__meta_kubernetes_namespace": "ns"}, "mine"),
        (
            {
                "service_name": "",
                "__meta_kubernetes_pod_annotation_pyroscope_io_service_name": "ann",
                "__meta_kubernetes_namespace": "ns",
                "__meta_kubernetes_pod_container_name": "c",
            },
            "ann",
        ),
        (
            {
                "__meta_kubernetes_namespace": "ns",
                "__meta_kubernetes_pod_container_name": "c",
                "__meta_docker_container_name": "/web-1",
            },
            "ebpf/ns/c",
        ),
        ({"__meta_kubernetes_namespace": "ns", "__meta_docker_container_name": "/web-1"}, "web-1"),
        ({"__meta_kubernetes_pod_container_name": "c"}, "unspecified"),
        ({"__meta_docker_container_name": "web-1"}, "web-1"),
        ({"__meta_docker_container_name": "/", "__meta_dockerswarm_service_name": "svc"}, "svc"),
        (
            {
                "__meta_dockerswarm_container_label_service_name": "lbl",
                "__meta_dockerswarm_service_name": "svc",
            },
            "lbl",
        ),
        ({"__meta_dockerswarm_service_name": "svc"}, "svc"),
        ({}, "unspecified"),
    ],
)
def test_service_name_inference(labels, service_name):
    (target,) = build_targets([{**labels, "__container_id__": CID}])
    assert target.service_name == service_name


def test_name_defaults_to_process_cpu_and_is_kept_when_set():
    a, b = build_targets([{"__process_pid__": "1"}, {"__process_pid__": "2", "__name__": "x"}])
    assert a.get("__name__") == "process_cpu"
    assert b.get("__name__") == "x"


def test_public_labels_drop_double_underscore_names_except_name():
    (target,) = build_targets(
        [
            {
                "__meta_kubernetes_namespace": "ns",
                "__meta_kubernetes_pod_container_name": "c",
                "__meta_kubernetes_pod_container_id": f"containerd://{CID}",
                "__meta_pyroscope_ebpf_options_collect_kernel": "true",
                "__tmp_x": "1",
                "env": "prod",
                "empty": "",
            }
        ]
    )
    assert target.public_labels() == (
        ("__name__", "process_cpu"),
        ("env", "prod"),
        ("service_name", "ebpf/ns/c"),
    )
    assert target.get("__meta_pyroscope_ebpf_options_collect_kernel") == "true"
    assert target.labels == tuple(sorted(target.labels))


def test_target_is_an_immutable_value():
    (target,) = build_targets([{"__process_pid__": "5", "a": "1"}])
    assert target == Target(target.labels, 5, None)
    assert hash(target) == hash(Target(target.labels, 5, None))
    with pytest.raises(AttributeError):
        target.pid = 6  # type: ignore[misc]


def test_iteration_lists_every_target():
    targets = build_targets([{"__process_pid__": "1"}, {"__container_id__": CID}])
    assert sorted(t.key for t in targets) == [("container", CID), ("pid", 1)]


def test_the_target_set_is_read_only():
    targets = build_targets([{"__process_pid__": "1"}])
    with pytest.raises(TypeError):
        targets.by_pid[2] = targets.by_pid[1]  # type: ignore[index]
