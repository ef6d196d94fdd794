"""Run tests under a kernel that has sch_netem, on a machine whose own kernel does not.

Boots Debian's stock kernel (linux-image-amd64) under qemu's software emulation with a
busybox initramfs; the guest mounts this machine's root filesystem read-only over 9p
(scratch space: a tmpfs at /run/tmp) and runs the given command there (by default the
impairment tests with LAB_TEST_BACKEND=netem), then powers off. The command's exit status
is this script's.

    python tests/vm/netem_vm.py                     # the impairment tests, netem backend
    python tests/vm/netem_vm.py -- lab doctor        # any command, from the project directory

Needs root (apt-get for qemu-system-x86; the kernel and busybox .debs are unpacked into
/var/cache/p2p-lab/vm, nothing is installed into /boot). KVM is not used: a stock kernel
under KVM does not boot on these machines; TCG boots it in a few seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/p2p-lab/vm")
KERNEL_PACKAGE = "linux-image-amd64"
# Loaded at boot, in this order after their dependencies: 9p root, then what the lab uses.
MODULES = ["9p", "9pnet_virtio", "virtio_pci", "veth", "sch_netem", "sch_htb", "cls_u32"]
DEFAULT_COMMAND = [
    ".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", "-m", "impairment", "tests",
]
# The host's /tmp stays visible (read-only; a checkout may live there); scratch space is /run/tmp.
GUEST_ENV = {"HOME": "/run/tmp", "TMPDIR": "/run/tmp", "PYTHONDONTWRITEBYTECODE": "1", "LAB_TEST_BACKEND": "netem"}
EXIT_MARK = "LAB-VM-EXIT="
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for module in $(cat /modules.order); do insmod /modules/$module.ko || echo "insmod $module failed"; done
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot || poweroff -f
mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev
mount -t tmpfs run /newroot/run; mkdir -p /newroot/run/tmp /newroot/dev/shm; mount -t tmpfs shm /newroot/dev/shm
[ -f /with-share ] && mount -t 9p -o trans=virtio,version=9p2000.L share /newroot/mnt
chroot /newroot /bin/sh -c "$(cat /command)"
echo "LAB-VM-EXIT=$?"
poweroff -f
"""


def sh(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def kernel_version() -> str:
    """The stock kernel's version, from the metapackage's dependency (linux-image-6.1.0-56-amd64)."""
    depends = sh("apt-cache", "depends", KERNEL_PACKAGE)
    match = re.search(r"Depends: linux-image-(\S+)", depends)
    if not match:
        sys.exit(f"netem_vm: cannot find the kernel behind {KERNEL_PACKAGE}: {depends.strip()}")
    return match.group(1)


def prepare() -> tuple[Path, Path]:
    """qemu installed; kernel and busybox unpacked into the cache. Returns (kernel dir, busybox)."""
    if shutil.which("qemu-system-x86_64") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    version = kernel_version()
    tree, busybox = CACHE / version, CACHE / "busybox" / "bin" / "busybox"
    for package, target in ((f"linux-image-{version}", tree), ("busybox-static", CACHE / "busybox")):
        if not target.exists():  # unpacked beside the cache and renamed, so a killed run leaves no half tree
            CACHE.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=CACHE) as download:
                subprocess.run(["apt-get", "download", package], cwd=download, check=True, capture_output=True)
                deb = next(Path(download).glob("*.deb"))
                subprocess.run(["dpkg-deb", "-x", str(deb), f"{download}/tree"], check=True)
                Path(download, "tree").rename(target)
    return tree, busybox


def module_order(tree: Path, wanted: list[str]) -> list[Path]:
    """Module files with every dependency first, from each module's own `depends=` field."""
    files = {path.name.removesuffix(".ko"): path for path in tree.glob("lib/modules/*/kernel/**/*.ko")}
    ordered: list[Path] = []

    def visit(name: str) -> None:
        path = files[name.replace("-", "_")] if name.replace("-", "_") in files else files[name]
        if path in ordered:
            return
        depends = re.search(rb"\x00depends=([^\x00]*)\x00", path.read_bytes())
        for dependency in filter(None, (depends.group(1).decode().split(",") if depends else [])):
            visit(dependency)
        ordered.append(path)

    for name in wanted:
        visit(name)
    return ordered


def initramfs(tree: Path, busybox: Path, command: str, share: bool, target: Path) -> None:
    with tempfile.TemporaryDirectory() as staging:
        root = Path(staging)
        for directory in ("bin", "proc", "sys", "dev", "modules"):
            (root / directory).mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        modules = module_order(tree, MODULES)
        for module in modules:
            shutil.copy(module, root / "modules" / module.name)
        (root / "modules.order").write_text("\n".join(m.name.removesuffix(".ko") for m in modules) + "\n")
        (root / "command").write_text(command)
        if share:  # a marker named apart from the mount tag: a file "share" in the cwd made busybox mount it as a loop image
            (root / "with-share").touch()
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, check=True, capture_output=True).stdout
        archive = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], cwd=root, input=listing, check=True,
                                 capture_output=True).stdout
        target.write_bytes(archive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", default="3072", help="guest memory in MiB")
    parser.add_argument("--timeout", type=float, default=3000,
                        help="seconds before the guest is killed (the impairment tests take 20-45 minutes under TCG)")
    parser.add_argument("--share", type=Path, help="host directory the guest may write, mounted at /mnt (LAB_VM_SHARE)")
    parser.add_argument("command", nargs="*", help="command to run in the project directory (after --)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("netem_vm: run as root (it installs qemu and unpacks a kernel)")
    tree, busybox = prepare()
    environment = {"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", **GUEST_ENV}
    if args.share:
        environment["LAB_VM_SHARE"] = "/mnt"
    assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in environment.items())
    command = f"cd {shlex.quote(str(ROOT))} && env {assignments} {shlex.join(args.command or DEFAULT_COMMAND)}"
    with tempfile.TemporaryDirectory() as work:
        image = Path(work) / "initramfs.cpio"
        initramfs(tree, busybox, command, args.share is not None, image)
        qemu = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", args.memory, "-smp", "2", "-nographic", "-no-reboot",
            "-kernel", str(next(tree.glob("boot/vmlinuz-*"))), "-initrd", str(image),
            "-append", "console=ttyS0 quiet panic=-1",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap", "-nic", "none",
        ]
        if args.share:
            args.share.mkdir(parents=True, exist_ok=True)
            qemu += ["-virtfs", f"local,path={args.share.resolve()},mount_tag=share,security_model=none"]
        guest = subprocess.Popen(qemu, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        # A hung guest never closes its console, so the timeout is a watchdog, not a wait().
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            guest.kill()

        watchdog = threading.Timer(args.timeout, kill)
        watchdog.start()
        status = None
        assert guest.stdout is not None
        for line in guest.stdout:
            print(line, end="", flush=True)
            mark = re.search(EXIT_MARK + r"(\d+)", line)  # the console may put firmware escapes before it
            if mark:
                status = int(mark.group(1))
        guest.wait()
        watchdog.cancel()
    if timed_out.is_set() and status is None:
        print(f"netem_vm: the guest was killed after {args.timeout:.0f} s (--timeout)", file=sys.stderr)
        return 3
    if status is None:
        print("netem_vm: the guest stopped without reporting the command's exit status", file=sys.stderr)
        return 3
    return status


if __name__ == "__main__":
    sys.exit(main())
