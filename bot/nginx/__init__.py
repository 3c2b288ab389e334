"""What nginx itself reports: check_status and upstream_show readers."""
