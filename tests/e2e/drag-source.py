#!/usr/bin/python3
"""A drag source for the E2E: a small GTK 3 window at a fixed place that
offers one folder as `text/uri-list`, as a file manager does. The E2E
drags it onto the app with xdotool, so the app gets a real XDND drop
(Tauri's WindowEvent::DragDrop, the same path as a user's drop).

Usage: drag-source.py FOLDER X Y   (prints READY once the window is shown)
Needs Debian's python3-gi and gir1.2-gtk-3.0 (the system python3).
"""

import pathlib
import sys

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import GLib, Gdk, Gtk  # noqa: E402


def main() -> None:
    folder, x, y = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    uri = pathlib.Path(folder).resolve().as_uri()
    win = Gtk.Window(title="e2e drag source")
    win.set_decorated(False)
    win.set_default_size(260, 80)
    win.move(x, y)
    box = Gtk.EventBox()
    box.add(Gtk.Label(label=f"drag {pathlib.Path(folder).name}"))
    box.drag_source_set(Gdk.ModifierType.BUTTON1_MASK, [], Gdk.DragAction.COPY)
    box.drag_source_add_uri_targets()
    box.connect("drag-data-get", lambda _w, _ctx, data, _info, _t: data.set_uris([uri]))
    box.connect("drag-end", lambda *_: print("DRAG-END", flush=True))
    win.add(box)
    win.connect("destroy", Gtk.main_quit)

    def ready(*_):
        print("READY", flush=True)
        return False

    win.connect("map-event", lambda *_: GLib.timeout_add(200, ready))
    win.show_all()
    Gtk.main()


if __name__ == "__main__":
    main()
