# twistd -ny linkrouter.tac
#
# Runs the router from a checkout with the configuration taken from the environment
# (the same variables the options read: LINKROUTER_LISTEN, TOKEN_SECRET, ...).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.application import service  # noqa: E402

from linkrouter.tap import Options, makeService  # noqa: E402

options = Options(daemon=True)
options.parseOptions([])
application = service.Application("linkrouter")
makeService(options).setServiceParent(application)
