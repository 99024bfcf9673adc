"""
XEP-0133 Service Administration commands, run over XEP-0050 by the host's
admins: for now, the list of online users.

It is also the example of a module that only offers commands: a
L{CommandProvider} returning L{AdHocCommand}s, nothing more.
"""

from __future__ import annotations

from wokkel import data_form

from invitesrv.modules.adhoc import CommandProvider, CommandResult, FormCommand

NS_ADMIN = "http://jabber.org/protocol/admin"
MAX_ITEMS = ("25", "50", "75", "100", "150", "200", "none")


class OnlineUsersCommand(FormCommand):
    """
    C{get-online-users-list}: the bare JIDs of the host's accounts with at
    least one bound session, sorted, after a form asking how many to show
    (as XEP-0133 section 4.20 specifies).
    """

    node = NS_ADMIN + "#get-online-users-list"
    name = "Get List of Online Users"
    adminOnly = True

    def makeForm(self, requester, session):
        form = data_form.Form("form", title="Getting List of Online Users",
                              instructions=["How many users should be shown?"],
                              formNamespace=NS_ADMIN)
        form.addField(data_form.Field("list-single", "max_items", value="25",
                                      label="Maximum number of items to show",
                                      options={value: value for value in MAX_ITEMS}))
        return form

    def submit(self, requester, form, session):
        limit = form.get("max_items") or "25"
        if limit not in MAX_ITEMS:
            return CommandResult.executing(session.data["form"],
                                           note=f"Choose one of {', '.join(MAX_ITEMS)}",
                                           noteType="error")
        host = session.host
        online = sorted(bare for bare in host.router.sessions
                        if bare.rpartition("@")[2] == host.name)
        shown = online if limit == "none" else online[:int(limit)]
        result = data_form.Form("result", title="List of Online Users", formNamespace=NS_ADMIN)
        result.addField(data_form.Field("jid-multi", "onlineuserjids", values=shown,
                                        label="The list of all online users"))
        return CommandResult.completed(result, note=f"{len(online)} online, {len(shown)} shown")


class AdminCommandsModule(CommandProvider):
    """Offers the service administration commands to the host's admins."""

    name = "adhoc_admin"

    def __init__(self) -> None:
        CommandProvider.__init__(self)
        self.commands = (OnlineUsersCommand(),)

    def adhocCommands(self):
        return self.commands
