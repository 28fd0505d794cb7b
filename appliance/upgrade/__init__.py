"""Upgrades of the appliance from a signed offline bundle: apply, roll back, report.

``releases`` keeps the versioned release directories and the ``current`` / ``previous``
links, ``history`` the record of every upgrade and rollback, ``health`` the check an
upgrade must pass, ``restart`` the one-process-at-a-time restart of the chat core, ``apply``
and ``rollback`` the two operator verbs built from them (``hipchat-appliance upgrade``).
"""
