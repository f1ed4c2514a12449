#!/usr/bin/env bash
# Build the ModelArts custom training image (top-level Dockerfile) without a Docker daemon, then
# prove it inside the image as ModelArts runs it (uid 1000, gid 100): `python` on PATH, no CMD and
# no setuid/setgid file of our own, every package of the base kept at its version,
# `cloud-entry --help` and a tiny complete -> 2-rank conversion checked bit for bit against the
# image's MindSpore's own conversion.
#
# Why buildah and not docker: CI and developer machines have no Docker engine, and buildah
# builds a Dockerfile as root with chroot isolation and no daemon. Why debootstrap: when the base
# image cannot be pulled (no registry reachable), a Debian bookworm root filesystem (Python 3.11
# comes with it) is made from Debian's package archive and imported as a local base image.
#
# Idempotent: the Debian root filesystem and the imported base are made once and reused, the
# image tag is replaced, and every working container this script makes is removed on exit.
#
#   scripts/build_image.sh                          # python:3.11-slim-bookworm, else a Debian base
#   scripts/build_image.sh --debian-base            # always the local Debian (debootstrap) base
#   scripts/build_image.sh --base swr.cn-southwest-2.myhuaweicloud.com/ORG/mindspore:TAG
#   scripts/build_image.sh --tag cloud-ckpt-transform:0.1.0 --mindformers 1.9.0 --no-smoke
#   scripts/build_image.sh --mindspore-base 2.7.2   # on a stand-in for an Ascend base: Debian + MindSpore 2.7.2
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_BASE="python:3.11-slim-bookworm"
BASE="$DEFAULT_BASE"
BASE_GIVEN=0
DEBIAN_BASE=0
TAG="localhost/cloud-ckpt-transform:latest"
WORK="$ROOT/build/image"
PIP_INDEX="https://pypi.org/simple"
MINDFORMERS=""
MINDSPORE_BASE=""
SMOKE=1
LAYERS=0
DRIVER="${STORAGE_DRIVER:-overlay}"
DEBIAN_MIRROR="http://deb.debian.org/debian"
LOCAL_BASE="localhost/debian-python:3.11-bookworm"
# Where egress goes through a TLS-intercepting proxy its CA is in the host's bundle, not in the
# base image's: pip gets the host's bundle while building (never copied into the image).
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --base IMAGE         base image (default $DEFAULT_BASE; a local Debian base when it cannot be pulled)
  --debian-base        use the local Debian bookworm base (debootstrap) without trying a registry
  --tag NAME           image name (default $TAG)
  --work DIR           work folder for the Debian root filesystem and the smoke test (default build/image)
  --pip-index-url URL  package index for the build (default $PIP_INDEX)
  --mindformers VER    also install mindformers==VER (default: not installed)
  --mindspore-base VER build on the Debian base with mindspore==VER installed first (CPU build,
                       standing in for an Ascend base's MindSpore: the image must keep it)
  --storage-driver D   buildah storage driver: overlay (default) or vfs
  --ca-bundle FILE     CA bundle pip trusts while building (default $CA_BUNDLE; "none": the base's)
  --layers             keep intermediate layers (faster rebuilds, more disk)
  --no-smoke           build only
EOF
}

die() { echo "build_image.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) need_value "$@"; BASE="$2"; BASE_GIVEN=1; shift 2 ;;
        --debian-base) DEBIAN_BASE=1; shift ;;
        --tag) need_value "$@"; TAG="$2"; shift 2 ;;
        --work) need_value "$@"; WORK="$2"; shift 2 ;;
        --pip-index-url) need_value "$@"; PIP_INDEX="$2"; shift 2 ;;
        --mindformers) need_value "$@"; MINDFORMERS="$2"; shift 2 ;;
        --mindspore-base) need_value "$@"; MINDSPORE_BASE="$2"; shift 2 ;;
        --storage-driver) need_value "$@"; DRIVER="$2"; shift 2 ;;
        --ca-bundle) need_value "$@"; CA_BUNDLE="$2"; shift 2 ;;
        --layers) LAYERS=1; shift ;;
        --no-smoke) SMOKE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$DRIVER" == overlay || "$DRIVER" == vfs ]] || die "--storage-driver: overlay or vfs, not $DRIVER"
[[ $DEBIAN_BASE == 0 || $BASE_GIVEN == 0 ]] || die "--debian-base and --base exclude each other"
[[ -z "$MINDSPORE_BASE" || $BASE_GIVEN == 0 ]] || die "--mindspore-base and --base exclude each other"
[[ -z "$MINDSPORE_BASE" || "$MINDSPORE_BASE" =~ ^[0-9]+(\.[0-9]+){1,3}$ ]] || die "--mindspore-base: a version like 2.7.2, not $MINDSPORE_BASE"
[[ "$CA_BUNDLE" == none || -f "$CA_BUNDLE" ]] || die "--ca-bundle: no such file: $CA_BUNDLE"
[[ $EUID == 0 ]] || die "run as root (buildah without a daemon, debootstrap)"

# Every buildah call: no daemon, chroot isolation (no nested namespaces needed), one storage driver.
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER="$DRIVER"
bh() { buildah --storage-driver "$DRIVER" "$@"; }

# A URL may carry credentials (https://user:token@mirror/simple): never print them.
redact() { sed -E 's#(//)[^/@]+@#\1***@#g' <<<"$1"; }

declare -a REPORT=()
note() { REPORT+=("$1"); echo "== $1"; }
declare -a CONTAINERS=()
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do bh rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

ensure_tool() {   # ensure_tool COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null && return
    echo "+ apt-get install $2"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2"
}

image_exists() { bh inspect --type image "$1" >/dev/null 2>&1; }

# The CA bundle's folder, mounted over /mnt (which every base has) while pip runs: a mount point
# made for a file would stay in the image as an empty file.
ca_folder() { cd "$(dirname "$CA_BUNDLE")" && pwd -P; }

# A Debian bookworm base with python3.11 and pip, from Debian's archive: the root filesystem is
# made in a temporary folder and renamed only when complete, so a broken run leaves no half base.
make_debian_base() {
    local rootfs="$WORK/rootfs-bookworm" ctr mnt t0=$SECONDS
    if image_exists "$LOCAL_BASE"; then
        note "base: $LOCAL_BASE already imported, reused"
        return
    fi
    ensure_tool debootstrap debootstrap
    if [[ ! -f "$rootfs/.complete" ]]; then
        rm -rf "$rootfs" "$rootfs.tmp"
        mkdir -p "$WORK"
        local boot=(debootstrap --variant=minbase "--include=python3,python3-pip,ca-certificates"
                    bookworm "$rootfs.tmp" "$DEBIAN_MIRROR")
        echo "+ ${boot[*]}"
        "${boot[@]}"
        rm -rf "$rootfs.tmp"/var/lib/apt/lists/* "$rootfs.tmp"/var/cache/apt/archives/*.deb
        # Image builds need the Debian archive too (the Dockerfile's apt-get install).
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
            "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" >"$rootfs.tmp/etc/apt/sources.list"
        touch "$rootfs.tmp/.complete"
        mv "$rootfs.tmp" "$rootfs"
    fi
    ctr=$(bh from scratch); CONTAINERS+=("$ctr")
    mnt=$(bh mount "$ctr")
    tar -C "$rootfs" --exclude=./.complete --exclude='./proc/*' --exclude='./sys/*' \
        --exclude='./dev/*' -cf - . | tar -C "$mnt" -xpf -
    bh umount "$ctr" >/dev/null
    bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --os linux --arch amd64 "$ctr"   # no CMD: the image must not inherit one
    bh commit --quiet --format docker "$ctr" "$LOCAL_BASE" >/dev/null
    note "base: made $LOCAL_BASE with debootstrap bookworm ($((SECONDS - t0)) s)"
}

# The Debian base with mindspore==VER (PyPI's CPU build) and what it pulls in, standing in for an
# Ascend base whose MindSpore, numpy and protobuf the image must keep.
make_mindspore_base() {
    local tag="localhost/debian-python-mindspore:$MINDSPORE_BASE" ctr t0=$SECONDS
    if image_exists "$tag"; then note "base: $tag already made, reused"; BASE="$tag"; return; fi
    make_debian_base
    ctr=$(bh from --pull=never "$LOCAL_BASE"); CONTAINERS+=("$ctr")
    local ca=() cert=()
    if [[ "$CA_BUNDLE" != none ]]; then
        ca=(--volume "$(ca_folder):/mnt:ro"); cert=("PIP_CERT=/mnt/$(basename "$CA_BUNDLE")")
    fi
    echo "+ buildah run $LOCAL_BASE -- python3 -m pip install mindspore==$MINDSPORE_BASE"
    bh run --isolation chroot "${ca[@]}" "$ctr" -- env PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
        PIP_NO_CACHE_DIR=1 "${cert[@]}" python3 -m pip install --quiet --index-url "$PIP_INDEX" "mindspore==$MINDSPORE_BASE"
    bh commit --quiet --format docker "$ctr" "$tag" >/dev/null
    BASE="$tag"
    note "base: made $tag (Debian + mindspore $MINDSPORE_BASE) in $((SECONDS - t0)) s"
}

resolve_base() {
    if [[ -n "$MINDSPORE_BASE" ]]; then make_mindspore_base; return; fi
    if [[ $DEBIAN_BASE == 1 ]]; then make_debian_base; BASE="$LOCAL_BASE"; return; fi
    if image_exists "$BASE"; then note "base: $BASE (local)"; return; fi
    echo "+ buildah pull $BASE"
    if bh pull --quiet "$BASE" >/dev/null 2>"$WORK/pull.err"; then note "base: pulled $BASE"; return; fi
    if [[ $BASE_GIVEN == 1 ]]; then
        die "cannot pull $BASE: $(tail -n 1 "$WORK/pull.err")"
    fi
    note "base: $BASE cannot be pulled ($(tail -n 1 "$WORK/pull.err" | sed 's/.*: //')); using a Debian base"
    make_debian_base
    BASE="$LOCAL_BASE"
}

build() {
    local t0=$SECONDS args=()
    args=(--isolation chroot --format docker --pull=never --build-arg "BASE_IMAGE=$BASE" --build-arg "PIP_INDEX_URL=$PIP_INDEX"
          --build-arg "MINDFORMERS_VERSION=$MINDFORMERS" -f "$ROOT/Dockerfile" -t "$TAG")
    [[ $LAYERS == 1 ]] && args+=(--layers)
    if [[ "$CA_BUNDLE" != none ]]; then
        args+=(--volume "$(ca_folder):/mnt:ro" --build-arg "PIP_CERT=/mnt/$(basename "$CA_BUNDLE")")
    fi
    local shown="${args[*]}"
    shown="${shown//$PIP_INDEX/$(redact "$PIP_INDEX")}"
    echo "+ buildah bud $shown $ROOT"
    bh bud "${args[@]}" "$ROOT"
    note "build: $TAG from $BASE in $((SECONDS - t0)) s"
}

# Inside the image as uid 1000:100: the help, a tiny complete checkpoint written by MindSpore,
# transform-checkpoint to a dp1·mp2 strategy, and the result compared with MindSpore's own
# transform_checkpoints. The strategy and checkpoint helpers are the tests' own (tests/synth.py),
# bind-mounted with the work folder; nothing of the smoke test stays in the image.
# What ModelArts' image rules and an Ascend base need, base against image: the base's packages
# at their versions, no setuid/setgid file added, no CMD but the base's, `python` on PATH.
image_facts() {
    local bctr ictr base_pkgs img_pkgs changed added bcmd icmd
    bctr=$(bh from --pull=never "$BASE"); CONTAINERS+=("$bctr")
    ictr=$(bh from --pull=never "$TAG"); CONTAINERS+=("$ictr")
    base_pkgs=$(bh run --isolation chroot "$bctr" -- python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort)
    img_pkgs=$(bh run --isolation chroot "$ictr" -- python -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort)
    changed=$(comm -23 <(printf '%s\n' "$base_pkgs") <(printf '%s\n' "$img_pkgs") | paste -sd' ')
    note "in image: packages of the base changed: ${changed:-none} ($(comm -13 <(printf '%s\n' "$base_pkgs") <(printf '%s\n' "$img_pkgs") | wc -l) added); $(grep -i '^mindspore==' <<<"$img_pkgs" || echo 'no mindspore')"
    added=$(comm -13 <(bh run --isolation chroot "$bctr" -- find / -xdev -type f -perm /6000 2>/dev/null | sort) \
                     <(bh run --isolation chroot "$ictr" -- find / -xdev -type f -perm /6000 2>/dev/null | sort) | paste -sd' ')
    bcmd=$(bh inspect --type image --format '{{.OCIv1.Config.Cmd}}' "$BASE")
    icmd=$(bh inspect --type image --format '{{.OCIv1.Config.Cmd}}' "$TAG")
    note "in image: setuid/setgid files added: ${added:-none}; CMD ${icmd} (base: ${bcmd}); $(bh run --isolation chroot --user 1000:100 "$ictr" -- sh -c 'command -v python && python --version' | paste -sd' ')"
    [[ -z "$changed" && -z "$added" && "$icmd" == "$bcmd" ]]
}

smoke() {
    local dir="$WORK/smoke" ctr out rc t0=$SECONDS
    rm -rf "$dir"; mkdir -p "$dir"
    cp "$ROOT/tests/synth.py" "$dir/synth.py"
    chown -R 1000:100 "$dir"
    image_facts || { note "image facts FAILED"; return 1; }
    ctr=$(bh from --pull=never "$TAG"); CONTAINERS+=("$ctr")
    local run=(bh run --isolation chroot --user 1000:100 --env HOME=/home/ma-user
               --volume "$dir:/smoke" "$ctr" --)

    echo "+ buildah run --user 1000:100 $TAG -- cloud-entry --help"
    out=$("${run[@]}" cloud-entry --help 2>&1) && rc=0 || rc=$?
    printf '%s\n' "$out" | head -n 15
    note "in image, uid $("${run[@]}" id -u):$("${run[@]}" id -g): cloud-entry --help -> exit $rc"
    [[ $rc == 0 ]] || return 1

    echo "+ buildah run --user 1000:100 $TAG -- python -c 'write a complete checkpoint and a dp1·mp2 strategy'"
    "${run[@]}" python -c '
import sys; sys.path.insert(0, "/smoke")
import synth
params = synth.llama_params(num_layers=2, vocab=128, hidden=32, ffn=64)
synth.write_complete_checkpoint("/smoke/full.ckpt", params)
synth.write_strategy("/smoke/strategy_mp2", dp=1, mp=2, pp=1, params=params)
print("wrote /smoke/full.ckpt:", len(params), "parameters")
' || return 1
    echo "+ buildah run --user 1000:100 $TAG -- transform-checkpoint --src_checkpoint /smoke/full.ckpt --dst_strategy /smoke/strategy_mp2 --dst_checkpoint /smoke/out"
    "${run[@]}" transform-checkpoint --src_checkpoint /smoke/full.ckpt \
        --dst_strategy /smoke/strategy_mp2 --dst_checkpoint /smoke/out && rc=0 || rc=$?
    note "in image: transform-checkpoint complete -> 2 ranks (dp1 mp2) -> exit $rc"
    [[ $rc == 0 ]] || return 1

    echo "+ buildah run --user 1000:100 $TAG -- python -c 'compare with mindspore.transform_checkpoints'"
    "${run[@]}" python -c '
import os, sys; sys.path.insert(0, "/smoke")
import synth
ref = synth.ms_transform("/smoke/full.ckpt", "/smoke/ref", None, "/smoke/strategy_mp2")
synth.assert_same_checkpoint_dirs(ref, "/smoke/out")
for r in sorted(d for d in os.listdir("/smoke/out") if d.startswith("rank_")):
    print(r, sorted(os.listdir(os.path.join("/smoke/out", r))))
print("identical to mindspore.transform_checkpoints, bit for bit")
' && rc=0 || rc=$?
    note "in image: output == MindSpore's own conversion -> exit $rc ($((SECONDS - t0)) s for the smoke test)"
    [[ $rc == 0 ]]
}

summary() {
    local id size
    id=$(bh images --noheading --no-trunc --format '{{.ID}}' "$TAG" 2>/dev/null | head -n 1)
    size=$(bh images --noheading --format '{{.Size}}' "$TAG" 2>/dev/null | head -n 1)
    echo
    echo "==== summary ===="
    echo "image:  $TAG"
    echo "id:     ${id:-none}"
    echo "size:   ${size:-?}"
    echo "base:   $BASE"
    printf '  %s\n' "${REPORT[@]}"
    echo "total:  $((SECONDS)) s"
    echo "push:   buildah push $TAG docker://swr.<region>.myhuaweicloud.com/<organization>/cloud-ckpt-transform:<version>"
}

# All in one function, called on the last line: bash reads a script as it runs, so a script
# edited during a long build would otherwise go on with the new text at the old offset.
main() {
    local status=0 old
    mkdir -p "$WORK"
    ensure_tool buildah buildah
    resolve_base
    old=$(bh images --noheading --no-trunc --format '{{.ID}}' "$TAG" 2>/dev/null | head -n 1 || true)
    build
    if [[ -n "$old" ]] && ! bh images --noheading --no-trunc --format '{{.ID}}' "$TAG" | grep -qx "$old"; then
        if bh rmi "$old" >/dev/null 2>&1; then note "removed the previous $TAG (${old#sha256:})"; fi
    fi
    if [[ $SMOKE == 1 ]]; then
        smoke || status=1
        [[ $status == 0 ]] || note "smoke test FAILED"
    fi
    summary
    return "$status"
}

main; exit $?
