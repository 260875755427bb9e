"""Write the encoder's supervisord files; run by packer/scripts/install-encoder.sh
with the freshly installed project:

    python -m provisioning.encoder [--prefix P] [--etc-dir E] [--data-dir D]
        [--log-dir L] [--run-dir R] [--bin-dir B] [--systemd-dir S] [--user U]

Writes <etc-dir>/supervisord.conf (the `nommerd` program), <bin-dir>/supervisorctl
(a wrapper that reads that file), <bin-dir>/media-nommer-start-nommerd (starts
nommerd at boot when its settings are there), <systemd-dir>/media-nommer-encoder.service
and <systemd-dir>/media-nommer-ssh-host-keys.service.
Every folder defaults to the AMI's (provisioning.layout.EncoderLayout) and
must exist. Exit status 0, or 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path, PurePosixPath

from provisioning.layout import EncoderLayout
from provisioning.render import (render_boot_start, render_encoder_supervisord,
                                 render_encoder_unit, render_host_keys_unit,
                                 render_supervisorctl_wrapper)


def encoder_files(layout: EncoderLayout) -> dict[PurePosixPath, tuple[str, int]]:
    """{path: (text, mode)} of every file the encoder's supervisord needs."""
    return {
        layout.supervisord_conf: (render_encoder_supervisord(layout), 0o644),
        layout.supervisorctl_wrapper: (render_supervisorctl_wrapper(layout), 0o755),
        layout.boot_start: (render_boot_start(layout), 0o755),
        layout.unit_path: (render_encoder_unit(layout), 0o644),
        layout.host_keys_unit_path: (render_host_keys_unit(), 0o644),
    }


def write_files(files: dict[PurePosixPath, tuple[str, int]]) -> None:
    """Write each file whole (through a temporary name, then rename), so a
    reader never sees half a file."""
    for path, (text, mode) in files.items():
        temporary = Path(f"{path}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.chmod(temporary, mode)
        os.replace(temporary, Path(path))


def build_parser() -> argparse.ArgumentParser:
    defaults = EncoderLayout()
    parser = argparse.ArgumentParser(prog="python -m provisioning.encoder",
                                     description="Write the encoder's supervisord files.")
    for field in ("prefix", "etc_dir", "data_dir", "log_dir", "run_dir", "bin_dir",
                  "systemd_dir"):
        parser.add_argument("--" + field.replace("_", "-"), dest=field, type=PurePosixPath,
                            default=getattr(defaults, field),
                            help=f"default: {getattr(defaults, field)}")
    parser.add_argument("--user", default=defaults.user,
                        help="the user nommerd runs as (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    for name, value in args.items():
        if isinstance(value, PurePosixPath) and not value.is_absolute():
            print(f"provisioning.encoder: --{name.replace('_', '-')} must be an absolute path",
                  file=sys.stderr)
            return 2
    layout = EncoderLayout(**args)
    files = encoder_files(layout)
    write_files(files)
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
