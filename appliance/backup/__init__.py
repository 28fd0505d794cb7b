"""Backups of the appliance: the archive format, creating one, the schedule.

``archive`` is the format shared with restore and the HipChat export; ``create`` takes a
consistent backup of a running appliance (spool cut, MariaDB dump, OpenSearch snapshot, job
streams, configuration); ``schedule`` runs it nightly and keeps the last N.
"""
