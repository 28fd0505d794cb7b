"""Offline upgrade bundles: one signed tar carrying everything an air-gapped appliance installs.

``manifest`` signs and verifies a bundle (Ed25519 over ``manifest.json``'s exact bytes, a SHA-256
for every member); ``build`` assembles one on a machine that reaches the package registries.
"""
