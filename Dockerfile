# ModelArts custom training image: cloud-entry, transform-checkpoint and obs_io.
#
# BASE_IMAGE needs Python >= 3.9 (pyproject.toml's requires-python) and pip. The default builds
# anywhere and gets MindSpore 2.10 (the `mindspore` extra: --engine mindspore, the smoke test's
# reference). For Ascend jobs build on a MindSpore/MindFormers Ascend image from SWR (README,
# "Building the image"): its MindSpore, CANN, Python, numpy and protobuf are kept as they are
# (every package the base has is a constraint of the install; the build fails rather than change one):
#   docker build --build-arg BASE_IMAGE=swr.<region>.myhuaweicloud.com/<org>/<image>:<tag> -t ckpt:1 .
# Without a Docker daemon: scripts/build_image.sh (buildah; makes a Debian base offline if needed).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Ascend bases end as ma-user; installing needs root (uid 0) until the USER at the end.
USER 0

# The package index pip installs from (a mirror inside a VPC, for instance).
ARG PIP_INDEX_URL=https://pypi.org/simple
# Empty: no MindFormers (the usual case: the boot command runs a MindFormers checkout, or the base
# image already has it). A version, e.g. 1.9.0: installed in the same pip run as this package and
# under the same constraints (the base's packages are kept or the build fails).
ARG MINDFORMERS_VERSION=
# auto: the `mindspore` extra (MindSpore for --engine mindspore, numpy<2, safetensors<0.8) only
# when the base has no MindSpore; yes: always (the base's must then satisfy it); no: never.
ARG WITH_MINDSPORE=auto
# A CA bundle for pip behind a TLS-intercepting proxy, mounted only while building (buildah bud
# --volume /etc/ssl/certs:/mnt:ro --build-arg PIP_CERT=/mnt/ca-certificates.crt, as
# scripts/build_image.sh does); unset, pip trusts the base image's certificates.
ARG PIP_CERT
# The interpreter of the base image that gets the package (conda bases may want another name).
ARG PYTHON=python3

# Logs unbuffered: ModelArts collects the container's stdout/stderr.
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
# The base's setuid/setgid files are recorded first: ModelArts' image rules forbid adding any
# (the last RUN removes the bits from files this build added).
# hadolint ignore=DL3008
RUN find / -xdev -type f -perm /6000 2>/dev/null | sort >/tmp/setid.base; \
    if command -v apt-get >/dev/null; then \
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

# The package and what it needs, never the PyPI "moxing" (an unrelated project; obs_io stands in
# for mox.file). Every package the base already has is a constraint (`pip list --format=freeze`):
# its MindSpore, numpy, protobuf stay, or pip refuses and the build fails. A base whose Python is
# older than requires-python fails first, with one line. `python` is made to point at the base's
# interpreter where only python3 exists (the boot command runs `python ...`). PIP_BREAK_SYSTEM_PACKAGES:
# Debian's own python3 refuses system-wide installs otherwise; PIP_ROOT_USER_ACTION: installing as
# root is meant here. Both are environment variables because older pips of other bases ignore them.
COPY . /tmp/src
RUN command -v "${PYTHON}" >/dev/null || { echo "the base image has no ${PYTHON} (PYTHON build argument)" >&2; exit 1; }; \
    "${PYTHON}" -c "import re, sys; low = tuple(int(x) for x in re.search(r'requires-python = \">=([0-9]+)[.]([0-9]+)', open('/tmp/src/pyproject.toml').read()).groups()); sys.exit(0 if sys.version_info >= low else 'cloud-ckpt-transform needs Python >= %d.%d but the base image has %s: choose another BASE_IMAGE or PYTHON' % (low + (sys.version.split()[0],)))" \
    && "${PYTHON}" -m pip list --format=freeze --disable-pip-version-check >/tmp/base-packages.txt \
    && extra="" \
    && case "${WITH_MINDSPORE}" in \
        yes) extra="[mindspore]" ;; \
        no) ;; \
        auto) grep -qi '^mindspore==' /tmp/base-packages.txt || extra="[mindspore]" ;; \
        *) echo "WITH_MINDSPORE=${WITH_MINDSPORE}: auto, yes or no" >&2; exit 1 ;; \
    esac \
    && PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore "${PYTHON}" -m pip install --index-url "${PIP_INDEX_URL}" \
        --constraint /tmp/base-packages.txt "/tmp/src${extra}" ${MINDFORMERS_VERSION:+"mindformers==${MINDFORMERS_VERSION}"} \
    && rm -rf /tmp/src /tmp/base-packages.txt \
    && if ! command -v python >/dev/null; then ln -s "$(command -v "${PYTHON}")" /usr/local/bin/python; fi \
    && cloud-entry --help >/dev/null \
    && transform-checkpoint --help >/dev/null \
    && obs_io --help >/dev/null \
    && python -c "import numpy, google.protobuf as pb; print('numpy', numpy.__version__, 'protobuf', pb.__version__)" \
    && find / -xdev -type f -perm /6000 2>/dev/null | sort | comm -13 /tmp/setid.base - | xargs -r -d '\n' chmod ug-s \
    && rm -f /tmp/setid.base

WORKDIR /home/ma-user
USER 1000:100

# No ENTRYPOINT and no CMD of our own: ModelArts starts the container with the job's boot command
# (e.g. `cloud-entry -- python run_mindformer.py --config {config}`) and appends the
# hyperparameters to it. An ENTRYPOINT would be put in front of that command and change it; a CMD
# is replaced by the boot command anyway, so one here would only suggest a default that never
# runs on ModelArts (the base image's own CMD stays for `docker run -it IMAGE`). Run a tool
# explicitly: docker run --rm IMAGE cloud-entry --help
