"""
The admin console: pages in the browser over the admin API (DESIGN §11).

L{linkrouter.console.sessions} holds the signed-in sessions (the admin guard accepts
them beside the admin key); L{linkrouter.console.pages} serves the pages, their assets
and the sign-in endpoint under C{/console/}. The pages themselves (HTML, JavaScript,
CSS) are package data in C{static/}, served from memory: nothing is fetched from
anywhere else.
"""
