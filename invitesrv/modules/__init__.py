"""Features, one module per file, each a L{invitesrv.modules.base.HostModule}; see docs/modules.md."""
