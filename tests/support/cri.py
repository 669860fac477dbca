"""containerd 1.6 with its real CRI plugin on our snapshotter, and a small CRI client that plays
kubelet (stubs generated from proto/cri by scripts/gen-protos).

The CRI plugin runs with ``snapshotter = "stargz"`` and ``disable_snapshot_annotations = false``
(so its Prepares carry the image's reference and layer digests), pulls from the test registry
over plain HTTP (a hosts.toml directory), and uses a sandbox image built here from busybox and
imported with ctr. Pods run with the host's network: no CNI is needed.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import grpc

from stargz.cri.api import runtime_v1_pb2 as cri
from stargz.cri.api import runtime_v1_pb2_grpc as cri_grpc
from tests.support.containerd import PROXY_NAME, Containerd
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image

SANDBOX_IMAGE = "docker.io/stargz-test/pause:1"
CRI_PLUGIN = """
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true  # root here lacks CAP_SYS_RESOURCE (RECIPES.md)
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts_dir}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{work}/cni/bin"
    conf_dir = "{work}/cni/conf"
"""
POLL_S = 0.2
EXIT_TIMEOUT_S = 60.0


class CriContainerd(Containerd):
    """:class:`Containerd` with the CRI plugin enabled (the base config disables it)."""

    def __init__(self, workdir: Path, snapshotter_address: Path, hosts_dir: Path) -> None:
        super().__init__(workdir, snapshotter_address, CRI_PLUGIN.format(
            sandbox=SANDBOX_IMAGE, snapshotter=PROXY_NAME, hosts_dir=hosts_dir, work=workdir))

    def write_config(self) -> Path:
        config = super().write_config()
        text = config.read_text()
        enabled = text.replace('"io.containerd.grpc.v1.cri", ', "", 1)
        assert enabled != text, "the base config no longer disables the CRI plugin"
        config.write_text(enabled)
        return config

    def import_sandbox_image(self, work: Path) -> None:
        """A pause-like image (busybox sleeping) in CRI's namespace, unpacked for stargz."""
        rootfs = work / "pause-rootfs"
        extract_tar(busybox_rootfs_tar(), rootfs)
        source = make_oci_image(rootfs, work / "pause-oci", "1", cmd=("/bin/sleep", "86400"))
        archive = work / "pause.tar"
        subprocess.run(["skopeo", "copy", "--quiet", source,
                        f"docker-archive:{archive}:{SANDBOX_IMAGE}"], check=True)
        self.ctr("-n", "k8s.io", "images", "import", "--snapshotter", PROXY_NAME, str(archive))


class Kubelet:
    """What kubelet does over CRI, on two endpoints: images (``--image-service-endpoint``) and
    the runtime (containerd's socket)."""

    def __init__(self, image_endpoint: Path, runtime_endpoint: Path, log_dir: Path) -> None:
        self._image_channel = grpc.insecure_channel(f"unix://{image_endpoint}")
        self._runtime_channel = grpc.insecure_channel(f"unix://{runtime_endpoint}")
        self.images = cri_grpc.ImageServiceStub(self._image_channel)
        self.runtime = cri_grpc.RuntimeServiceStub(self._runtime_channel)
        self.log_dir = log_dir
        self.pods: list[str] = []

    def close(self) -> None:
        for pod in self.pods:  # the shims outlive containerd otherwise
            with contextlib.suppress(grpc.RpcError):
                self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
                self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        self._image_channel.close()
        self._runtime_channel.close()

    def pull(self, image: str, username: str, password: str) -> str:
        auth = cri.AuthConfig(username=username, password=password)
        request = cri.PullImageRequest(image=cri.ImageSpec(image=image), auth=auth)
        return str(self.images.PullImage(request, timeout=300).image_ref)

    def sandbox_config(self, name: str) -> cri.PodSandboxConfig:
        host_network = cri.NamespaceOption(network=cri.NODE)
        security = cri.LinuxSandboxSecurityContext(namespace_options=host_network)
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
            log_directory=str(self.log_dir / name),
            linux=cri.LinuxPodSandboxConfig(security_context=security))

    def run_to_exit(self, name: str, image: str, *command: str) -> tuple[int, str]:
        """Run ``command`` in a new pod; its exit code and its CRI log file's text."""
        sandbox = self.sandbox_config(name)
        pod = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=sandbox),
                                         timeout=120).pod_sandbox_id
        self.pods.append(pod)
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="work"),
                                     image=cri.ImageSpec(image=image), command=list(command),
                                     log_path="work.log")
        created = self.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=config, sandbox_config=sandbox), timeout=120)
        self.runtime.StartContainer(
            cri.StartContainerRequest(container_id=created.container_id), timeout=60)
        status = self._wait_exited(created.container_id)
        return status.exit_code, Path(status.log_path).read_text()

    def _wait_exited(self, container: str) -> cri.ContainerStatus:
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while True:
            status = self.runtime.ContainerStatus(
                cri.ContainerStatusRequest(container_id=container)).status
            if status.state == cri.CONTAINER_EXITED:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"container {container} did not exit: {status}")
            time.sleep(POLL_S)


def log_messages(cri_log: str) -> str:
    """The workload's output from a CRI log file (``TIME STREAM TAG MESSAGE`` lines)."""
    return "".join(line.split(" ", 3)[3] + "\n" for line in cri_log.splitlines() if line)

