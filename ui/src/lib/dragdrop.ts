// Window-wide folder drops. Real paths only come through Tauri's drag-drop
// events (HTML5 drop gives no filesystem paths).
import { getCurrentWebview } from '@tauri-apps/api/webview';

export interface DropHandlers {
  hover: (over: boolean) => void;
  drop: (paths: string[]) => void;
}

export async function listenDrops(h: DropHandlers): Promise<() => void> {
  return getCurrentWebview().onDragDropEvent((e) => {
    switch (e.payload.type) {
      case 'enter':
      case 'over':
        h.hover(true);
        break;
      case 'leave':
        h.hover(false);
        break;
      case 'drop':
        h.hover(false);
        if (e.payload.paths.length > 0) h.drop(e.payload.paths);
        break;
    }
  });
}
