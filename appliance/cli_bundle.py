"""`hipchat-appliance bundle ...`: build, verify and sign offline upgrade bundles.

A thin layer over ``appliance.bundle``. ``build`` runs on a machine that reaches the package
registries, from a checkout of the version to ship; ``verify`` runs anywhere; ``keygen`` makes a
signing key pair (the private key stays off the appliance). Exit codes: 0 ok, 1 refused or failed.
Registered on the ``cli`` group by one import in `appliance.cli`.
"""

from __future__ import annotations

import json
import os
import sys

import click
from rich.markup import escape
from rich.table import Table

from appliance.cli import EXIT_REFUSED, cli, console, error_console
from appliance.lib.status_view import human_bytes



@cli.group()
def bundle() -> None:
    """Offline upgrade bundles: build one, verify one, make a signing key."""


@bundle.command("build")
@click.option("--version", "version", required=True, help="The bundle's version: must be hipchat_server.__version__ of the tree.")
@click.option("--signing-key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key file <key-id>.key (from `bundle keygen`).")
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False), help="Where the bundle is written.")
@click.option("--source", "source_dir", default=".", show_default=True, type=click.Path(exists=True, file_okay=False), help="Checkout of the version to ship.")
@click.option("--upgrades-from", multiple=True, help="Versions that may upgrade to this one, as a specifier (repeatable; default: '<VERSION').")
@click.option("--opensearch-tarball", type=click.Path(exists=True, dir_okay=False), help="Official OpenSearch tarball to carry instead of the Maven jars.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bundle_build(version, signing_key, out_dir, source_dir, upgrades_from, opensearch_tarball, as_json) -> None:
    """Build hipchat-appliance-VERSION.bundle: wheels, Debian packages, OpenSearch, web client, installer, signed."""
    from appliance.bundle.build import BuildError, build_bundle

    try:
        report = build_bundle(
            source_dir=source_dir, version=version, signing_key=signing_key, out_dir=out_dir,
            upgrades_from=list(upgrades_from) or None, opensearch_tarball=opensearch_tarball,
            progress=(lambda m: None) if as_json else (lambda m: error_console.print(f"[cyan]==>[/cyan] {escape(m)}")),
        )
    except BuildError as e:
        error_console.print(f"[red]Build failed:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"Bundle {escape(report.path)}")
    for column in ("Part", "Files", "Size", "Seconds"):
        table.add_column(column, justify="left" if column == "Part" else "right")
    for name, figures in report.parts.items():
        table.add_row(name, str(figures.get("files", "")), human_bytes(figures["bytes"]) if "bytes" in figures else "", f"{figures['seconds']:.1f}")
    table.add_row("[bold]bundle[/bold]", str(report.files), human_bytes(report.bytes), f"{report.seconds:.1f}")
    console.print(table)


@bundle.command("verify")
@click.argument("bundle_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--trusted-keys-dir", type=click.Path(file_okay=False), help="Also trust the public keys in this directory (default: config upgrade.trusted_keys_dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.pass_context
def bundle_verify(ctx, bundle_file, trusted_keys_dir, as_json) -> None:
    """Check BUNDLE_FILE's signature and every checksum; exits 1 and says why when it is refused."""
    from appliance.bundle.manifest import BundleRefused, key_fingerprint, load_trusted_keys, trusted_key_dirs, verify_bundle

    dirs = trusted_key_dirs(trusted_keys_dir or _configured_keys_dir(ctx))
    try:
        verified = verify_bundle(bundle_file, dirs)
    except (BundleRefused, ValueError) as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    manifest = verified.manifest
    summary = {
        "version": verified.version,
        "upgrades_from": manifest.get("upgrades_from"),
        "created_at": manifest.get("created_at"),
        "key_id": verified.key_id,
        "key_fingerprint": key_fingerprint(load_trusted_keys(dirs)[verified.key_id]),
        "files": len(manifest["files"]),
        "bytes": os.path.getsize(bundle_file),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console.print(
        f"[green]Verified[/green] {escape(bundle_file)}: version {escape(summary['version'])} "
        f"(upgrades from {escape(', '.join(summary['upgrades_from'] or []) or 'nothing')}), {summary['files']} files, "
        f"{human_bytes(summary['bytes'])}, signed by {escape(summary['key_id'])} (fingerprint {summary['key_fingerprint']})",
        soft_wrap=True,
    )


def _configured_keys_dir(ctx) -> str | None:
    """``upgrade.trusted_keys_dir`` from the appliance's configuration, when there is one."""
    import yaml

    path = (ctx.obj or {}).get("config") or "/etc/hipchat/hipchat.yml"
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except OSError:
        return None
    return ((config.get("upgrade") or {}).get("trusted_keys_dir")) or None


@bundle.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for <key-id>.key and <key-id>.pub.")
@click.option("--key-id", help="Name of the key (default hipchat-<date>-<fingerprint>).")
def bundle_keygen(out_dir, key_id) -> None:
    """Make an Ed25519 signing key pair: keep the .key offline, ship the .pub in appliance/bundle/keys/."""
    from appliance.bundle.manifest import generate_key_pair

    try:
        key, pub = generate_key_pair(out_dir, key_id)
    except (FileExistsError, ValueError) as e:
        error_console.print(f"[red]Error:[/red] {escape(str(e))}")
        sys.exit(EXIT_REFUSED)
    console.print(f"Private key: {escape(key)} (mode 0600; keep it off the appliance)\nPublic key:  {escape(pub)}")
