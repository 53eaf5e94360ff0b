import './lib/locale'; // first: fixes navigator.language before uPlot loads
import { mount } from 'svelte';
import './app.css';
import App from './App.svelte';

// Browser preview without Tauri (docs in src/dev/mock-backend.ts); tree-shaken otherwise.
const mock = import.meta.env.VITE_MOCK_IPC === '1' ? await import('./dev/mock-backend') : null;
mock?.install();

const target = document.getElementById('app');
if (!target) throw new Error('#app missing from index.html');
export default mount(App, { target });
void mock?.preview(location.hash);
