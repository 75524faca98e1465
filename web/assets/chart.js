/*
 * Chart.js with every controller, element, scale and plugin registered,
 * exposed as the global `window.Chart` (as the upstream UMD build does).
 */

import { Chart, registerables } from 'chart.js';

Chart.register(...registerables);

window.Chart = Chart;
