#!/usr/bin/env bash
# Install the client tools of the client suite (tests/clients) that scripts/setup-dev.sh does not:
#   - restic 0.18 (Debian trixie's static binary; setup-dev.sh installs bookworm's 0.14) and the
#     newest restic Debian has (sid's: 0.19.1 when written),
#   - the newest rclone Debian has (sid's: 1.75.2 when written; setup-dev.sh installs 1.60.1),
#   - aws cli v2: Debian bookworm's 2.9.19 (/usr/bin/aws) and trixie's 2.23 (in its own venv),
#   - s3cmd (Debian's package),
#   - the AWS SDK for JavaScript v3 (npm ci from tests/clients/js/package-lock.json),
#   - the Go SDKs velero and kopia use (Debian's aws-sdk-go-v2 and minio-go v7, with its Go):
#     tests/clients/go/velero and tests/clients/go/kopia built offline in GOPATH mode.
# Everything that is not a Debian package goes to .clients/ (ignored by git); the tests find
# .clients/bin/restic-0.18, restic-newest, rclone-newest, aws-2.23, velero-s3check,
# kopia-s3check and .clients/js/node_modules.
# Debian packages need root (as in CI); without it they are skipped and their tests skip.
# Safe to run again: whatever is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CLIENTS=$REPO/.clients
mkdir -p "$CLIENTS/bin"
export DEBIAN_FRONTEND=noninteractive
is_root() { [ "$(id -u)" = 0 ]; }
say() { echo "install-clients: $*"; }

# --- Debian bookworm packages: s3cmd 2.3.0, aws cli v2 2.9.19, Go and two of its S3 SDKs -------
GO_PACKAGES=(golang-go golang-github-aws-aws-sdk-go-v2-dev golang-github-minio-minio-go-v7-dev)
if command -v apt-get >/dev/null && is_root; then
    missing=()
    command -v s3cmd >/dev/null || missing+=(s3cmd)
    [ -x /usr/bin/aws ] || missing+=(awscli)
    for package in "${GO_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "apt-get install ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    say "not root or no apt-get: s3cmd, /usr/bin/aws (aws cli 2.9) and ${GO_PACKAGES[*]} not installed"
fi

# --- Debian trixie's restic 0.18 and awscli 2.23, sid's restic and rclone -----------------------
# With a private apt state: only these .debs are downloaded and unpacked into .clients/; the
# system's apt state and packages are left alone. restic and rclone are Go binaries that need
# nothing but libc; trixie's awscli is pure Python. sid's versions move: the tests run
# whatever is newest there, and the summary below prints it.
if [ ! -x "$CLIENTS/bin/restic-0.18" ] || [ ! -x "$CLIENTS/bin/aws-2.23" ] ||
    [ ! -x "$CLIENTS/bin/restic-newest" ] || [ ! -x "$CLIENTS/bin/rclone-newest" ]; then
    if ! command -v apt-get >/dev/null; then
        say "no apt-get: restic 0.18 and newest, rclone newest and aws cli 2.23 not installed"
    else
        APT=$CLIENTS/apt
        mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/sources" "$APT/debs"
        for suite in trixie sid; do
            if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                # The first stanza (the main archive, with the machine's mirror).
                awk 'BEGIN { RS = ""; ORS = "\n" } NR == 1' /etc/apt/sources.list.d/debian.sources |
                    sed -e "s/^Suites:.*/Suites: $suite/" -e '/^#/d' >"$APT/sources/$suite.sources"
            else
                cat >"$APT/sources/$suite.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
            fi
        done
        apt_private=(
            -o "Dir::State::Lists=$APT/lists"
            -o "Dir::Cache=$APT/cache"
            -o "Dir::Etc::SourceList=/dev/null"
            -o "Dir::Etc::SourceParts=$APT/sources"
            -o "Debug::NoLocking=1"
            -o "APT::Sandbox::User=root"
        )
        say "downloading restic and awscli from Debian trixie, restic and rclone from sid"
        apt-get "${apt_private[@]}" update -qq
        mkdir -p "$APT/debs/trixie" "$APT/debs/sid"
        (cd "$APT/debs/trixie" && apt-get "${apt_private[@]}" download -qq restic/trixie awscli/trixie)
        (cd "$APT/debs/sid" && apt-get "${apt_private[@]}" download -qq restic/sid rclone/sid)
        unpack() { # unpack DEB into .clients/NAME and link its usr/bin/TOOL as .clients/bin/NAME
            rm -rf "${CLIENTS:?}/$2"
            dpkg -x "$1" "$CLIENTS/$2"
            ln -sf "../$2/usr/bin/$3" "$CLIENTS/bin/$2"
        }
        [ -x "$CLIENTS/bin/restic-0.18" ] ||
            unpack "$APT"/debs/trixie/restic_0.18.*_amd64.deb restic-0.18 restic
        [ -x "$CLIENTS/bin/restic-newest" ] ||
            unpack "$APT"/debs/sid/restic_*_amd64.deb restic-newest restic
        [ -x "$CLIENTS/bin/rclone-newest" ] ||
            unpack "$APT"/debs/sid/rclone_*_amd64.deb rclone-newest rclone
        if [ ! -x "$CLIENTS/bin/aws-2.23" ]; then
            AWS2=$CLIENTS/awscli-2.23
            rm -rf "$AWS2"
            dpkg -x "$APT"/debs/trixie/awscli_2.*_all.deb "$AWS2"
            # Debian's package relies on python3-* packages of trixie: a venv of its own gives
            # them (within awscli 2.23's own bounds), with the unpacked package on its path.
            python=$(command -v python3.11 || command -v python3)
            "$python" -m venv "$AWS2/venv"
            "$AWS2/venv/bin/pip" install -q --disable-pip-version-check \
                'awscrt==0.23.4' 'colorama>=0.2.5,<0.4.7' 'cryptography>=40.0.0,<43.0.2' \
                'python-dateutil>=2.1,<=2.9.0' 'distro>=1.5.0,<1.9.0' 'docutils>=0.10,<0.20' \
                'jmespath>=0.7.1,<1.1.0' 'prompt-toolkit>=3.0.24,<3.0.39' \
                'ruamel.yaml>=0.15.0,<=0.17.21' 'urllib3>=1.25.4,<1.27' 'zipp'
            site=$("$AWS2/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            echo "$AWS2/usr/lib/python3/dist-packages" >"$site/awscli-debian.pth"
            # Debian compiles at install time; unpacked by hand, and with PYTHONDONTWRITEBYTECODE
            # set on this machine, every run would compile 2 s of modules again.
            "$AWS2/venv/bin/python" -m compileall -q -j 0 "$AWS2/usr/lib/python3/dist-packages" >/dev/null
            cat >"$CLIENTS/bin/aws-2.23" <<EOF
#!/bin/sh
exec "$AWS2/venv/bin/python" "$AWS2/usr/bin/aws" "\$@"
EOF
            chmod +x "$CLIENTS/bin/aws-2.23"
        fi
        rm -rf "$APT"
    fi
fi

# --- the AWS SDK for JavaScript v3 -----------------------------------------------------------------
if command -v npm >/dev/null; then
    JS=$CLIENTS/js
    mkdir -p "$JS"
    if ! cmp -s tests/clients/js/package-lock.json "$JS/package-lock.json" ||
        [ ! -d "$JS/node_modules/@aws-sdk/client-s3" ]; then
        say "npm ci (@aws-sdk/client-s3, @aws-sdk/lib-storage)"
        cp tests/clients/js/package.json tests/clients/js/package-lock.json "$JS/"
        (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error)
    fi
else
    say "no npm: the JavaScript SDK is not installed"
fi

# --- the Go SDKs of velero (aws-sdk-go-v2) and kopia (minio-go v7) ------------------------------
# Debian ships their sources in /usr/share/gocode: GOPATH mode builds against them offline (no
# module proxy, no go.mod). The SDKs' version constants are unexported: -X gives them to each
# program's -version. A program is built again when its sources are newer than its binary, or
# Go or an SDK changed (the binary's .stamp records what it was built with).
GOCODE=/usr/share/gocode/src/github.com
AWS_SDK=$GOCODE/aws/aws-sdk-go-v2
MINIO=$GOCODE/minio/minio-go/v7
if command -v go >/dev/null && [ -d "$AWS_SDK/service/s3" ] && [ -d "$MINIO" ]; then
    module_version() { sed -n 's/^const goModuleVersion = "\(.*\)"$/\1/p' "$1/go_module_metadata.go"; }
    s3_version=$(module_version "$AWS_SDK/service/s3")
    manager_version=$(module_version "$AWS_SDK/feature/s3/manager")
    minio_version=$(sed -n 's/^\s*libraryVersion\s*=\s*"\(.*\)"$/\1/p' "$MINIO/api.go")
    declare -A ldflags=(
        [velero]="-X main.s3Version=$s3_version -X main.managerVersion=$manager_version"
        [kopia]="-X main.minioVersion=$minio_version"
    )
    mkdir -p "$CLIENTS/go/gopath"
    for program in velero kopia; do
        binary=$CLIENTS/bin/$program-s3check
        source=tests/clients/go/$program
        stamp="$(go version) ${ldflags[$program]}"
        if [ ! -x "$binary" ] || [ "$(cat "$binary.stamp" 2>/dev/null)" != "$stamp" ] ||
            [ -n "$(find "$source" -newer "$binary" -print -quit)" ]; then
            say "go build $source"
            GO111MODULE=off GOPATH="$CLIENTS/go/gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= \
                GOCACHE="$CLIENTS/go/cache" \
                go build -trimpath -ldflags "${ldflags[$program]}" -o "$binary.tmp" "./$source"
            mv "$binary.tmp" "$binary"
            echo "$stamp" >"$binary.stamp"
        fi
    done
else
    say "no go or no Debian Go SDKs (${GO_PACKAGES[*]}): velero-s3check and kopia-s3check not built"
fi

# --- what is there now ------------------------------------------------------------------------------
version() { "$@" 2>/dev/null | head -n 1 || true; }
say "restic      $(version restic version)"
say "restic 0.18 $(version "$CLIENTS/bin/restic-0.18" version)"
say "restic sid  $(version "$CLIENTS/bin/restic-newest" version)"
say "rclone      $(version rclone version)"
say "rclone sid  $(version "$CLIENTS/bin/rclone-newest" version)"
say "s3cmd       $(version s3cmd --version)"
say "aws (v2)    $(version /usr/bin/aws --version)"
say "aws 2.23    $(version "$CLIENTS/bin/aws-2.23" --version)"
say "node        $(version node --version), @aws-sdk/client-s3 $(version node -p \
    "require('$CLIENTS/js/node_modules/@aws-sdk/client-s3/package.json').version")"
say "velero SDK  $(version "$CLIENTS/bin/velero-s3check" -version)"
say "kopia SDK   $(version "$CLIENTS/bin/kopia-s3check" -version)"
