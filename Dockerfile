# ModelArts custom training image: cloud-entry, transform-checkpoint and obs_io on MindSpore 2.10.
#
# BASE_IMAGE must have Python 3.11 and pip (python3 -m pip). The default builds anywhere; for
# Ascend jobs build on a MindSpore/MindFormers Ascend image from SWR (README, "Building the image"):
#   docker build --build-arg BASE_IMAGE=swr.<region>.myhuaweicloud.com/<org>/<image>:<tag> -t ckpt:1 .
# Without a Docker daemon: scripts/build_image.sh (buildah; makes a Debian base offline if needed).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Ascend bases end as ma-user; installing needs root (uid 0) until the USER at the end.
USER 0

# The package index pip installs from (a mirror inside a VPC, for instance).
ARG PIP_INDEX_URL=https://pypi.org/simple
# Empty: no MindFormers (the usual case: the boot command runs a MindFormers checkout, or the base
# image already has it). A version, e.g. 1.9.0: installed in the same pip run as this package, so
# the resolver keeps our pins (mindspore 2.10, numpy<2, safetensors<0.8) or the build fails.
ARG MINDFORMERS_VERSION=
# A CA bundle for pip behind a TLS-intercepting proxy, mounted only while building (buildah bud
# --volume /etc/ssl/certs:/mnt:ro --build-arg PIP_CERT=/mnt/ca-certificates.crt, as
# scripts/build_image.sh does); unset, pip trusts the base image's certificates.
ARG PIP_CERT
# The interpreter of the base image that gets the package (conda bases may want another name).
ARG PYTHON=python3

# Logs go to standard output unbuffered: ModelArts collects the container's stdout/stderr.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# What MindSpore's CPU libraries load that a slim Debian lacks: libgomp1 (OpenMP; `import
# mindspore` fails without it); libstdc++6, libgcc-s1, zlib1g, liblzma5, libbz2-1.0 are listed
# because they are NEEDED too, although Debian bases already have them. ca-certificates: HTTPS to
# OBS and the package index. Versions are not pinned on purpose: the base image is an argument, so
# the versions are whatever its release ships; pinning would break every other base. Bases
# without apt (EulerOS) must already have these libraries.
# hadolint ignore=DL3008
RUN if command -v apt-get >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            libgomp1 libstdc++6 libgcc-s1 zlib1g liblzma5 libbz2-1.0 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ModelArts runs the container as ma-user, uid 1000, gid 100, home /home/ma-user. Ascend bases
# already have that user: then it is kept as it is.
RUN if ! id -u ma-user >/dev/null 2>&1; then \
        useradd --uid 1000 --gid 100 --create-home --home-dir /home/ma-user \
            --shell /bin/bash ma-user; \
    fi \
    && test "$(id -u ma-user):$(id -g ma-user)" = "1000:100"

# The package with its pinned dependencies from pyproject.toml, never the PyPI "moxing" (an
# unrelated project; obs_io stands in for mox.file). PIP_BREAK_SYSTEM_PACKAGES: Debian's own
# python3 refuses system-wide installs otherwise; PIP_ROOT_USER_ACTION: installing as root is
# meant here. Both are environment variables because older pips of other bases ignore them.
COPY . /tmp/src
RUN PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore "${PYTHON}" -m pip install --index-url "${PIP_INDEX_URL}" \
        /tmp/src ${MINDFORMERS_VERSION:+"mindformers==${MINDFORMERS_VERSION}"} \
    && rm -rf /tmp/src \
    && cloud-entry --help >/dev/null \
    && transform-checkpoint --help >/dev/null \
    && "${PYTHON}" -c "import mindspore, numpy, safetensors; print('mindspore', mindspore.__version__, 'numpy', numpy.__version__)"

WORKDIR /home/ma-user
USER 1000:100

# No ENTRYPOINT and no CMD of our own: ModelArts starts the container with the job's boot command
# (e.g. `cloud-entry -- python run_mindformer.py --config {config}`) and appends the
# hyperparameters to it. An ENTRYPOINT would be put in front of that command and change it; a CMD
# is replaced by the boot command anyway, so one here would only suggest a default that never
# runs on ModelArts (the base image's own CMD stays for `docker run -it IMAGE`). Run a tool
# explicitly: docker run --rm IMAGE cloud-entry --help
