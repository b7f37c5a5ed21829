"""One router module per area: fleet (clients), live, support, installers, admin."""
