# Runs after boot.py on every reset: start the controller.
import app.run

app.run.start()
