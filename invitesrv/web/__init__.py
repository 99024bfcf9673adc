"""
The HTTP side of invitesrv: invite landing pages with QR codes, web
registration for apps that cannot redeem an invite themselves, and a JSON
admin API. L{invitesrv.web.site.makeSite} builds the whole site for a server.
"""
