// The demo page's one control: hiding the panel. A hidden panel never connects, and
// showing it again picks the conversation up where it was.
const panel = document.getElementById('chat');
const toggle = document.getElementById('toggle-chat');

function render() {
  const hidden = panel.hidden;
  toggle.textContent = hidden ? 'Open chat' : 'Hide chat';
  toggle.setAttribute('aria-expanded', String(!hidden));
}

toggle.addEventListener('click', () => {
  panel.hidden = !panel.hidden;
  render();
});
render();
